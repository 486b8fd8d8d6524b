fn main() { println!("ds4-bench: not yet implemented"); }
