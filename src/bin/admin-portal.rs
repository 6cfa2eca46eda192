//! `admin-portal [--listen ADDR] [--config cluster.toml]`: the stateless
//! AdminPortal (clients and products). The logic lives in the `portals` crate.

#[global_allocator]
static ALLOCATOR: storage_node::node::memory::Allocator = storage_node::node::memory::Allocator;

fn main() {
    portals::cli::admin_main()
}
