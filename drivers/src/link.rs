//! The daemon connection over clustd-transport.
//! (Placeholder until clustd-transport's API is committed.)

use crate::session::{DialError, Dialer, DriverConfig, Link, SessionError};

/// Dials the daemon over clustd-transport.
pub(crate) struct TransportDialer;

impl TransportDialer {
    pub(crate) fn new(_config: &DriverConfig) -> Result<Self, SessionError> {
        Ok(Self)
    }
}

/// A connection to the daemon.
pub(crate) struct TransportLink;

impl Link for TransportLink {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn send(&mut self, _frame: Vec<u8>) -> Result<(), String> {
        Err("not connected".into())
    }
}

impl Dialer for TransportDialer {
    type Link = TransportLink;
    async fn dial(&mut self) -> Result<TransportLink, DialError> {
        Err(DialError {
            class: "unavailable",
            message: "transport not built yet".into(),
        })
    }
}
