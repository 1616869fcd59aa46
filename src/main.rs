//! The threadhost binary. A placeholder until the command line lands; the library holds the
//! host.

fn main() {}
