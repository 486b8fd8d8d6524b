//! Dev-only: paths to ../shared/golden, cached tiny GGUFs, comparison helpers.
