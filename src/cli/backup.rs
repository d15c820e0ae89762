//! `backup` (an online snapshot of a running server, through its AdminService)
//! and `restore` (a new data dir from one).

use std::path::PathBuf;

use clap::Args;
use tower::BoxError;

use crate::cli::client::{BearerToken, ClientArgs};
use crate::cli::etcd::EtcdArgs;
use crate::cli::partial_path;
use crate::cli::serve::StoreArg;
use crate::store::etcd::EtcdStore;
use crate::store::sled::SledStore;

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Where to write the backup (written to FILE.partial, then renamed).
    pub file: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup file (from `cooperation-registry backup`, of either engine).
    pub file: PathBuf,
    /// What to restore into: `sled`, a new --data-dir, or `etcd`, an empty
    /// --etcd-prefix of the cluster at --etcd-endpoints, which nothing else
    /// writes to while the restore runs.
    #[arg(long, env = "COOPERATION_REGISTRY_STORE", value_enum, default_value = "sled")]
    pub store: StoreArg,
    /// The new data dir to build; it must not exist or be empty.
    #[arg(long, env = "COOPERATION_REGISTRY_DATA_DIR", required_if_eq("store", "sled"))]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

pub async fn backup(args: &BackupArgs) -> Result<(), BoxError> {
    use std::io::Write;
    let (channel, token) = args.client.connect().await?;
    let mut client = crate::pb::cooperation::v1::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        BearerToken::new(token)?,
    )
    .max_decoding_message_size(64 * 1024 * 1024);
    let request = crate::pb::cooperation::v1::BackupRequest {};
    let partial = partial_path(&args.file);
    let mut file = std::fs::File::create(&partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let mut stream = client.backup(request).await?.into_inner();
    let mut revision = 0;
    let mut bytes = 0;
    while let Some(response) = stream.message().await? {
        file.write_all(&response.data)?;
        bytes += response.data.len();
        revision = revision.max(response.revision);
    }
    if revision == 0 {
        return Err("the backup stream ended before the server finished it".into());
    }
    file.sync_all()?;
    std::fs::rename(&partial, &args.file)?;
    println!("backed up revision {revision} to {} ({bytes} bytes)", args.file.display());
    Ok(())
}

pub async fn restore(args: &RestoreArgs) -> Result<(), BoxError> {
    let mut file = std::fs::File::open(&args.file).map_err(|e| format!("cannot open {}: {e}", args.file.display()))?;
    let cannot = |e| format!("cannot restore {}: {e}", args.file.display());
    let (revision, into) = match (args.store, &args.data_dir) {
        (StoreArg::Etcd, _) => {
            let mut file = std::io::BufReader::new(file);
            (EtcdStore::restore(args.etcd.options()?, &mut file).await.map_err(cannot)?, args.etcd.describe())
        }
        (StoreArg::Sled, Some(dir)) => (SledStore::restore(dir, &mut file).map_err(cannot)?, dir.display().to_string()),
        (StoreArg::Sled, None) => return Err("restore --store sled needs --data-dir".into()),
    };
    println!("restored {} into {into} at revision {revision}", args.file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn a_backup_is_written_beside_its_file_under_its_whole_name() {
        assert_eq!(super::partial_path(Path::new("dir/registry.backup")), Path::new("dir/registry.backup.partial"));
        assert_ne!(super::partial_path(Path::new("a.one")), super::partial_path(Path::new("a.two")));
    }
}
