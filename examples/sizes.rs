fn main() {
    use omniroute::core::*;
    println!("OrderRecord {}", std::mem::size_of::<order::OrderRecord>());
    println!("Decision {}", std::mem::size_of::<model::Decision>());
    println!("Attempt {}", std::mem::size_of::<placement::Attempt>());
    println!("HoldItem {}", std::mem::size_of::<stock::HoldItem>());
    println!("HoldOutcome {}", std::mem::size_of::<stock::HoldOutcome>());
    println!(
        "OrderRequest {}",
        std::mem::size_of::<model::OrderRequest>()
    );
    println!("Reservation {}", std::mem::size_of::<stock::Reservation>());
}
