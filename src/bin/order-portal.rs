//! `order-portal [--listen ADDR] [--config cluster.toml]`: the stateless
//! OrderPortal (orders). The logic lives in the `portals` crate.

fn main() {
    portals::cli::order_main()
}
