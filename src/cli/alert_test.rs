//! `lbx-relay alert-test`: one notice sent to the configured `[alerts]` URL.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail};

use crate::clock::Clock;
use crate::compiled::Compiled;

pub(super) async fn alert_test(path: &Path) -> anyhow::Result<ExitCode> {
    let rt = Compiled::load(path).map_err(|p| anyhow!("{}", p.join("\n")))?;
    let Some(cfg) = &rt.config.alerts else { bail!("{}: no [alerts] section: nothing to test", path.display()) };
    let notice = crate::alerts::Notice {
        kind: "test",
        key: "test".into(),
        state: "firing",
        text: "a test notification (lbx-relay alert-test): alerts reach this channel".into(),
    };
    crate::alerts::post_notice(&crate::proxy::client_builder().build()?, cfg, &notice, Clock::system().now_ms())
        .await
        .map_err(|e| anyhow!(rt.config.secrets.mask(&crate::telemetry::Chain(&e).to_string())))?;
    out!("test alert sent");
    Ok(ExitCode::SUCCESS)
}
