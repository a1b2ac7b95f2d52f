//! clustd-transport (work in progress).
