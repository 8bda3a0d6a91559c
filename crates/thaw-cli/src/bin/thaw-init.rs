//! `thaw-init`: the supervisor inside every sandbox (see `thaw_runtime::init`).
fn main() {
    thaw_runtime::init::main()
}
