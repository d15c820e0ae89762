//! `cooperation-registry export FILE --server ADDR [--filter KIND=FILTER ...]`:
//! writes the live records of a running server, as one revision of its store
//! shows them, to a dataset file (proto3 JSON of `cooperation.v1.Dataset`,
//! the format `import` reads), through DatasetService.ExportDataset.
//!
//! The file is written as the chunks arrive, one record a line, each
//! serialized on its own with the JSON mapping `import` parses (the lists'
//! framing is written here): an export of any size holds one chunk. It goes
//! to FILE.partial, which is synced and renamed to FILE once the server has
//! sent the last chunk, and removed if the export fails.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use prost_reflect::{DynamicMessage, ReflectMessage};
use tower::BoxError;

use crate::cli::client::{BearerToken, ClientArgs};
use crate::pb::cooperation::v1::dataset_service_client::DatasetServiceClient;
use crate::pb::cooperation::v1::{Dataset, ExportDatasetRequest};

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Where to write the dataset (written to FILE.partial, then renamed).
    pub file: PathBuf,
    /// Export only the records of KIND that FILTER matches: KIND is parties,
    /// partnership-domains, agreements or engagements, FILTER an AIP-160
    /// filter as KIND's List call takes it. Once for each kind; the kinds
    /// without one are exported whole.
    #[arg(long = "filter", value_name = "KIND=FILTER", value_parser = parse_filter)]
    pub filters: Vec<(ListKind, String)>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The lists of a dataset, in the order an export sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ListKind {
    Parties,
    PartnershipDomains,
    Agreements,
    Engagements,
}

const LISTS: [ListKind; 4] =
    [ListKind::Parties, ListKind::PartnershipDomains, ListKind::Agreements, ListKind::Engagements];

impl ListKind {
    /// Its field of `Dataset`, by proto name.
    fn field(self) -> &'static str {
        match self {
            ListKind::Parties => "parties",
            ListKind::PartnershipDomains => "partnership_domains",
            ListKind::Agreements => "agreements",
            ListKind::Engagements => "engagements",
        }
    }

    /// How the summary names its records.
    fn plural(self) -> &'static str {
        match self {
            ListKind::Parties => "parties",
            ListKind::PartnershipDomains => "partnership domains",
            ListKind::Agreements => "agreements",
            ListKind::Engagements => "engagements",
        }
    }

    /// `count` of its records, in words.
    fn count(self, count: usize) -> String {
        match (count, self) {
            (1, ListKind::Parties) => "1 party".into(),
            (1, _) => format!("1 {}", self.plural().trim_end_matches('s')),
            _ => format!("{count} {}", self.plural()),
        }
    }
}

/// `KIND=FILTER` of `--filter`.
fn parse_filter(text: &str) -> Result<(ListKind, String), String> {
    let (kind, filter) = text
        .split_once('=')
        .ok_or("expected KIND=FILTER, KIND one of parties, partnership-domains, agreements, engagements")?;
    let kind = match kind.trim() {
        "parties" => ListKind::Parties,
        "partnership-domains" | "partnership_domains" | "partnershipDomains" => ListKind::PartnershipDomains,
        "agreements" => ListKind::Agreements,
        "engagements" => ListKind::Engagements,
        other => {
            return Err(format!(
                "{other:?} is not a kind of record: parties, partnership-domains, agreements or engagements"
            ));
        }
    };
    Ok((kind, filter.to_string()))
}

/// The request `filters` make, each kind once at most.
fn request(filters: &[(ListKind, String)]) -> Result<ExportDatasetRequest, String> {
    let mut request = ExportDatasetRequest::default();
    for (kind, filter) in filters {
        let field = match kind {
            ListKind::Parties => &mut request.party_filter,
            ListKind::PartnershipDomains => &mut request.partnership_domain_filter,
            ListKind::Agreements => &mut request.agreement_filter,
            ListKind::Engagements => &mut request.engagement_filter,
        };
        if !field.is_empty() {
            return Err(format!("--filter {} is given twice: join the two with AND", kind.field()));
        }
        *field = filter.clone();
    }
    Ok(request)
}

pub async fn run(args: &ExportArgs) -> Result<(), BoxError> {
    let request = request(&args.filters)?;
    let (channel, token) = args.client.connect().await?;
    let mut client = DatasetServiceClient::with_interceptor(channel, BearerToken::new(token)?)
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut stream = client.export_dataset(request).await.map_err(|status| describe(&status))?.into_inner();
    // The file is made once the server has accepted the export.
    let mut file: Option<DatasetFile> = None;
    while let Some(response) = stream.message().await.map_err(|status| describe(&status))? {
        let file = match &mut file {
            Some(file) => file,
            None => file.insert(DatasetFile::create(&args.file, response.revision)?),
        };
        if response.revision != file.revision {
            return Err(format!(
                "the server sent records of revision {} in an export of revision {}",
                response.revision, file.revision
            )
            .into());
        }
        file.append(&response.dataset.unwrap_or_default())?;
    }
    let file = file.ok_or("the export ended before the server sent anything")?;
    let (revision, counts) = (file.revision, file.counts);
    file.finish()?;
    let counts: Vec<String> = LISTS.iter().zip(counts).map(|(kind, n)| kind.count(n)).collect();
    println!("exported {} at revision {revision} to {}", counts.join(", "), args.file.display());
    Ok(())
}

/// A status with its field violations, for the person running the export.
fn describe(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let mut text = format!("export refused: {:?}: {}", status.code(), status.message());
    if let Some(bad) = status.get_error_details().bad_request() {
        for v in &bad.field_violations {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    text
}

/// A dataset file being written: the lists in order, each opened when its
/// first record comes (or at the end, empty), one record a line.
struct DatasetFile {
    out: std::io::BufWriter<std::fs::File>,
    /// Where it is written until it is complete.
    partial: PathBuf,
    file: PathBuf,
    revision: i64,
    /// The list open now (its `[` written), if any.
    open: Option<ListKind>,
    /// Records of each list written.
    counts: [usize; 4],
    /// Whether it was renamed into place (else dropping it removes it).
    finished: bool,
}

impl DatasetFile {
    fn create(file: &Path, revision: i64) -> Result<DatasetFile, BoxError> {
        let partial = super::partial_path(file);
        let created =
            std::fs::File::create(&partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        let mut written = DatasetFile {
            out: std::io::BufWriter::with_capacity(1 << 20, created),
            partial,
            file: file.to_owned(),
            revision,
            open: None,
            counts: [0; 4],
            finished: false,
        };
        // int64 is a string in proto3 JSON.
        write!(written.out, "{{\n  \"{}\": \"{revision}\"", json_name("revision"))?;
        Ok(written)
    }

    /// Writes a chunk's records, after those of every earlier chunk.
    fn append(&mut self, chunk: &Dataset) -> Result<(), BoxError> {
        self.records(ListKind::Parties, &chunk.parties)?;
        self.records(ListKind::PartnershipDomains, &chunk.partnership_domains)?;
        self.records(ListKind::Agreements, &chunk.agreements)?;
        self.records(ListKind::Engagements, &chunk.engagements)
    }

    fn records<R: ReflectMessage>(&mut self, kind: ListKind, records: &[R]) -> Result<(), BoxError> {
        if records.is_empty() {
            return Ok(());
        }
        if self.open.is_some_and(|open| open > kind) {
            return Err(format!("the server sent {} after {}", kind.plural(), self.open.unwrap().plural()).into());
        }
        self.open_list(kind)?;
        for record in records {
            let separator = if self.counts[kind as usize] == 0 { "" } else { "," };
            write!(self.out, "{separator}\n    ")?;
            let message: DynamicMessage = record.transcode_to_dynamic();
            serde_json::to_writer(&mut self.out, &message)?;
            self.counts[kind as usize] += 1;
        }
        Ok(())
    }

    /// Opens the list `kind`, closing the one open and writing those between
    /// them, empty.
    fn open_list(&mut self, kind: ListKind) -> std::io::Result<()> {
        let first = match self.open {
            Some(open) if open == kind => return Ok(()),
            Some(open) => {
                self.close_list(open)?;
                open as usize + 1
            }
            None => 0,
        };
        for skipped in &LISTS[first..kind as usize] {
            write!(self.out, ",\n  \"{}\": []", json_name(skipped.field()))?;
        }
        write!(self.out, ",\n  \"{}\": [", json_name(kind.field()))?;
        self.open = Some(kind);
        Ok(())
    }

    fn close_list(&mut self, kind: ListKind) -> std::io::Result<()> {
        match self.counts[kind as usize] {
            0 => write!(self.out, "]"),
            _ => write!(self.out, "\n  ]"),
        }
    }

    /// Closes the lists, syncs the file and renames it into place.
    fn finish(mut self) -> Result<(), BoxError> {
        let last = ListKind::Engagements;
        if self.open != Some(last) {
            self.open_list(last)?;
        }
        self.close_list(last)?;
        writeln!(self.out, "\n}}")?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        std::fs::rename(&self.partial, &self.file)
            .map_err(|e| format!("cannot rename {} to {}: {e}", self.partial.display(), self.file.display()))?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for DatasetFile {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// The JSON name of a field of `Dataset` (`partnershipDomains`), as import
/// and every proto3 JSON parser read it.
fn json_name(field: &str) -> String {
    let descriptor = Dataset::default().descriptor();
    let field = descriptor.get_field_by_name(field).unwrap_or_else(|| panic!("a Dataset has a field {field}"));
    field.json_name().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::cooperation::v1::{Agreement, Party};

    #[test]
    fn filters_name_a_kind_once() {
        assert_eq!(parse_filter("agreements=title:\"x=y\"").unwrap(), (ListKind::Agreements, "title:\"x=y\"".into()));
        assert_eq!(parse_filter("partnership-domains=").unwrap(), (ListKind::PartnershipDomains, String::new()));
        assert!(parse_filter("treaties=title:x").unwrap_err().contains("treaties"));
        assert!(parse_filter("agreements").is_err());
        let twice = [(ListKind::Parties, "kind = KIND_STATE".to_string()), (ListKind::Parties, "x".to_string())];
        assert!(request(&twice).unwrap_err().contains("twice"));
        let one = request(&[(ListKind::Engagements, "kind = KIND_SUMMIT".into())]).unwrap();
        let counted: Vec<String> = LISTS.iter().map(|kind| kind.count(1)).collect();
        assert_eq!(counted, ["1 party", "1 partnership domain", "1 agreement", "1 engagement"]);
        assert_eq!(one.engagement_filter, "kind = KIND_SUMMIT");
    }

    /// Chunks written one after another make one dataset that import's
    /// parser reads back whole, the lists without records included; and
    /// nothing is left behind unless it is finished.
    #[test]
    fn chunks_make_one_dataset_that_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let party = |id: &str| Party { name: format!("parties/{id}"), display_name: id.into(), ..Default::default() };
        let agreement = Agreement { name: "agreements/a".into(), title: "A".into(), ..Default::default() };
        let chunks = [
            Dataset { parties: vec![party("a"), party("b")], ..Default::default() },
            Dataset { parties: vec![party("c")], agreements: vec![agreement.clone()], ..Default::default() },
            Dataset::default(),
        ];
        let mut file = DatasetFile::create(&path, 42).unwrap();
        for chunk in &chunks {
            file.append(chunk).unwrap();
        }
        file.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = crate::cli::import::parse_dataset(&text).unwrap();
        assert_eq!(parsed.revision, 42);
        assert_eq!(parsed.parties, [party("a"), party("b"), party("c")]);
        assert_eq!(parsed.agreements, [agreement]);
        assert!(parsed.partnership_domains.is_empty() && parsed.engagements.is_empty());
        assert!(text.contains("\"partnershipDomains\": []"), "{text}");
        assert!(!super::super::partial_path(&path).exists());

        // Nothing but the revision; and a file dropped unfinished is removed.
        let empty = dir.path().join("empty.json");
        DatasetFile::create(&empty, 7).unwrap().finish().unwrap();
        let parsed = crate::cli::import::parse_dataset(&std::fs::read_to_string(&empty).unwrap()).unwrap();
        assert_eq!(parsed, Dataset { revision: 7, ..Default::default() });
        let cut = dir.path().join("cut.json");
        let mut unfinished = DatasetFile::create(&cut, 7).unwrap();
        unfinished.append(&chunks[0]).unwrap();
        drop(unfinished);
        assert!(!cut.exists() && !super::super::partial_path(&cut).exists());

        // Records out of the lists' order are refused.
        let mut file = DatasetFile::create(&dir.path().join("order.json"), 1).unwrap();
        file.append(&chunks[1]).unwrap();
        assert!(file.append(&chunks[0]).unwrap_err().to_string().contains("parties after agreements"));
    }
}
