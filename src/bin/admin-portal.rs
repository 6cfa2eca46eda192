//! `admin-portal [--listen ADDR] [--config cluster.toml]`: the stateless
//! AdminPortal (clients and products). The logic lives in the `portals` crate.

fn main() {
    portals::cli::admin_main()
}
