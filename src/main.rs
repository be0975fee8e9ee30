//! The qforge command line.

fn main() -> std::process::ExitCode {
    quiet_headless_vulkan();
    qforge::cli::main()
}

/// Mesa's implicit Vulkan layer `VK_LAYER_MESA_device_select` connects to
/// the display server to order the GPUs, and where there is no session
/// (servers, CI, containers: no `XDG_RUNTIME_DIR`) libwayland prints
/// "error: XDG_RUNTIME_DIR is invalid or not set in the environment."
/// twice on every adapter probe. qforge chooses its adapter itself, so
/// without a session the layer is switched off through its own variable
/// (`NODEVICE_SELECT`), unless the user set it.
fn quiet_headless_vulkan() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // The first statement of `main`: no other thread exists yet to
        // read the environment while it changes.
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}
