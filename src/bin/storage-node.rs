//! `storage-node --id N [--config cluster.toml]`: one member of one shard.
//! All the logic lives in the `storage-node` crate.

fn main() {
    storage_node::cli::main()
}
