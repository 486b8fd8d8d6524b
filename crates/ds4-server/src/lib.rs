//! ds4-server library: the axum app.
