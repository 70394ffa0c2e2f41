//! `lbx-relay init`: a working configuration for one connector written into a folder.

use std::path::Path;
use std::process::ExitCode;

pub(super) fn init(dir: &Path, connector: Option<&str>) -> anyhow::Result<ExitCode> {
    let written = crate::init::init(dir, connector)?;
    for f in &written.files {
        out!("wrote {}", f.display());
    }
    out!();
    out!("Set these variables (in the environment, or a file read with ${{file:/path}}):");
    for (name, default) in &written.variables {
        match default {
            None if name == "LBX_ADMIN_TOKEN" => out!("  {name}   (required; make one: openssl rand -hex 24)"),
            None => out!("  {name}   (required)"),
            Some(d) if d.is_empty() => out!("  {name}   (optional)"),
            Some(d) => out!("  {name}   (optional, default {d})"),
        }
    }
    let config = written.files[0].display();
    out!();
    out!("Then: lbx-relay check -c {config} && lbx-relay serve -c {config}");
    Ok(ExitCode::SUCCESS)
}
