//! Words of a text as `:` on a string matches them and the word index
//! holds them: letters and digits, lowercased, accents removed ("Économie"
//! is "economie"); anything else separates words.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// The words of `text`, in order.
pub fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    for c in text.nfd().filter(|c| !is_combining_mark(*c)) {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Whether the words of `query` run on in `text`, the last one as the
/// start of a word: `"economic"` is in "Socio-Economic Partnership" and in
/// "Economics", "supplies and serv" in "supplies and services". A query
/// without words is in every text that has one.
pub fn contains(text: &str, query: &str) -> bool {
    let (text, query) = (words(text), words(query));
    let Some((last, run)) = query.split_last() else { return !text.is_empty() };
    text.windows(query.len()).any(|at| at[..run.len()] == *run && at[run.len()].starts_with(last.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_folded_and_split_on_anything_else() {
        assert_eq!(words("Socio-Économic  Partnership, 2020!"), ["socio", "economic", "partnership", "2020"]);
        assert_eq!(words("Ångström's  naïve café"), ["angstrom", "s", "naive", "cafe"]);
        assert!(words(" -- ").is_empty());
    }

    #[test]
    fn a_query_is_a_run_of_words_the_last_one_begun() {
        let title = "Agreement concerning Reciprocal Provision of Supplies and Services";
        assert!(contains(title, "supplies"));
        assert!(contains(title, "SUPPL"));
        assert!(contains(title, "supplies and serv"));
        assert!(contains(title, "reciprocal provision"));
        assert!(!contains(title, "upplies"), "a word's middle is not its start");
        assert!(!contains(title, "supplies services"), "words run on");
        assert!(!contains(title, "supp and"), "only the last word may be begun");
        assert!(contains("Comprehensive Économic Partnership", "economic"));
        assert!(contains("x", "--"));
        assert!(!contains("", "--"));
    }
}
