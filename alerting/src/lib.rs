//! # alerting — rules and channels (see its issue); nothing here yet beyond the crate map.
