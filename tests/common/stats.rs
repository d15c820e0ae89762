//! Figures over samples, and a process's memory.

/// The values in ascending order.
pub fn sorted<T: PartialOrd>(values: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut values: Vec<T> = values.into_iter().collect();
    values.sort_by(|a, b| a.partial_cmp(b).expect("values that compare (no NaN)"));
    values
}

/// The value at quantile `q` (0 to 1) of values in ascending order: the one at
/// index ⌊len × q⌋ (the last for q = 1), None when there are none.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let index = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied()
}

/// The median: the middle value, the upper one of an even count.
pub fn median<T: Copy + PartialOrd>(values: impl IntoIterator<Item = T>) -> T {
    quantile(&sorted(values), 0.5).expect("a median of at least one value")
}

/// The smallest value and the median.
pub fn min_and_median<T: Copy + PartialOrd>(values: impl IntoIterator<Item = T>) -> (T, T) {
    let values = sorted(values);
    (values[0], quantile(&values, 0.5).unwrap())
}

/// (resident, peak resident) memory of process `pid`, in KiB, from
/// `/proc/<pid>/status` (zeros when it cannot be read).
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
