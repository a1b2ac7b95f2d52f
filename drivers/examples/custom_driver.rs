//! A complete custom driver: writes the role to a file. Run it beside a daemon with
//! `cargo run -p clustd-drivers --example custom_driver -- 127.0.0.1:7400 /etc/clustd/driver-secret`.
use clustd_drivers::{ActionResult, Driver, DriverConfig, RoleChange, TransportKind};

struct RoleFile;

impl Driver for RoleFile {
    async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
        let line = format!("{} term={}\n", change.role.as_str(), change.term);
        match tokio::fs::write("/tmp/clustd-role", line).await {
            Ok(()) => ActionResult::Ok,
            Err(e) => ActionResult::Failed(e.to_string()),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let daemon = args.next().unwrap_or("127.0.0.1:7400".into()).parse()?;
    let secret = std::fs::read(args.next().unwrap_or("/etc/clustd/driver-secret".into()))?;
    let config = DriverConfig::new(daemon, TransportKind::Quic, secret, "role-file");
    clustd_drivers::run(config, RoleFile, async {
        tokio::signal::ctrl_c().await.unwrap_or(())
    })
    .await?;
    Ok(())
}
