//! openraft's own storage conformance suite, run against our RocksDB log store and state machine.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use wasmraft_node::types::TypeConfig;
use wasmraft_node::{LogStore, SnapshotConfig, SnapshotSettings, StateMachine};
use wasmraft_runtime::{Runtime, RuntimeConfig};
use wasmraft_store::Store;

struct RocksBuilder {
    runtime: Runtime,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let fail = |e: &dyn std::fmt::Display| StorageError::read(TypeConfig::err_from_string(e.to_string()));
        let dir = tempfile::tempdir().map_err(|e| fail(&e))?;
        let store = Store::open(dir.path().join("db")).map_err(|e| fail(&e))?;
        let settings = SnapshotSettings::new(dir.path().join("snapshots"), &SnapshotConfig::default());
        let sm = StateMachine::open(1, store.clone(), self.runtime.clone(), settings, Default::default())
            .map_err(|e| fail(&e))?;
        Ok((dir, LogStore::new(store), sm))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_passes_openrafts_storage_suite() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    Suite::test_all(RocksBuilder { runtime }).await.unwrap();
}
