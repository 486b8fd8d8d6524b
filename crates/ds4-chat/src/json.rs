//! A small JSON scanner that keeps the input's spelling: validates, minifies (whitespace outside
//! strings removed, nothing else touched) and walks the members of a top-level object in order.
//! serde_json would re-spell numbers and, without `preserve_order`, reorder keys (spec §2.5 wants
//! JSON object order and minified, not re-serialized, values).
