//! What the command lines of clustd's binaries (`clustd`, `clustd-bench`) share: the library
//! types they take as arguments, parsed by the library's own spelling, so no binary keeps a
//! copy of a library enum to hand to clap.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clustd_transport::TransportKind;

/// `--transport quic|websocket`: the `cluster.transport` values ([`TransportKind::as_str`]),
/// listed as clap's possible values.
pub fn transport_parser() -> impl TypedValueParser<Value = TransportKind> {
    PossibleValuesParser::new(TransportKind::ALL.map(TransportKind::as_str)).map(|name| {
        // PossibleValuesParser only lets through the names listed above.
        TransportKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .unwrap_or_else(|| unreachable!("{name} is one of TransportKind::ALL"))
    })
}

/// `--transport quic|websocket|both` for a tool that can run both: `both` is
/// [`TransportKind::ALL`], in its order.
pub fn transports_parser() -> impl TypedValueParser<Value = Transports> {
    let names = TransportKind::ALL.map(TransportKind::as_str);
    PossibleValuesParser::new(names.into_iter().chain(["both"])).map(|name| {
        Transports(
            TransportKind::ALL
                .into_iter()
                .filter(|kind| name == "both" || kind.as_str() == name)
                .collect(),
        )
    })
}

/// The transports a `--transport quic|websocket|both` argument names ([`transports_parser`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transports(pub Vec<TransportKind>);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Args {
        #[arg(long, value_parser = transport_parser(), default_value = "quic")]
        transport: TransportKind,
        #[arg(long, value_parser = transports_parser(), default_value = "both")]
        transports: Transports,
    }

    /// The spellings stay those of `cluster.transport`; anything else is refused.
    #[test]
    fn transports_parse_by_their_config_spelling() {
        use clap::Parser as _;
        let args = Args::try_parse_from(["t"]).expect("defaults");
        assert_eq!(args.transport, TransportKind::Quic);
        assert_eq!(args.transports.0, TransportKind::ALL.to_vec());
        let args = Args::try_parse_from(["t", "--transport", "websocket", "--transports", "quic"])
            .expect("parse");
        assert_eq!(args.transport, TransportKind::WebSocket);
        assert_eq!(args.transports.0, vec![TransportKind::Quic]);
        assert!(Args::try_parse_from(["t", "--transport", "ws"]).is_err());
        assert!(Args::try_parse_from(["t", "--transport", "both"]).is_err());
    }
}
