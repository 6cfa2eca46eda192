//! `order-portal [--listen ADDR] [--config cluster.toml]`: the stateless
//! OrderPortal (orders). The logic lives in the `portals` crate.

#[global_allocator]
static ALLOCATOR: storage_node::node::memory::Allocator = storage_node::node::memory::Allocator;

fn main() {
    portals::cli::order_main()
}
