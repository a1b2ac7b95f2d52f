//! clustd (work in progress).
