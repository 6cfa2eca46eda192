//! `storage-node --id N [--config cluster.toml]`: one member of one shard.
//! All the logic lives in the `storage-node` crate.

#[global_allocator]
static ALLOCATOR: storage_node::node::memory::Allocator = storage_node::node::memory::Allocator;

fn main() {
    storage_node::cli::main()
}
