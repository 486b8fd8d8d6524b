fn main() { println!("ds4-server: not yet implemented"); }
