//! clustd-drivers (work in progress).
