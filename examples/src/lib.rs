//! Examples for skprocess; start with `tour.rs`.
