//! Random fault schedules (filled in later).
