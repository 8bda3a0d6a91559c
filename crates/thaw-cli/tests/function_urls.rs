//! Function URLs end to end: boto3 configures them, plain HTTP calls them
//! (signed with botocore's SigV4 for `AWS_IAM`), a real Python function
//! answers (`tests/boto3/function_urls.py`).

mod common;

use common::*;

#[test]
fn boto3_configures_function_urls_and_http_clients_call_them() {
    const TEST: &str = "boto3_configures_function_urls";
    if !can_run(TEST) {
        return;
    }
    if !has_boto3() {
        skip(TEST, "boto3 is not installed (scripts/test.sh installs it)");
        return;
    }
    let d = Daemon::start(&[]);
    run_boto3_script(&d, "function_urls.py", &[]);
}
