//! `mqtt-policy`: the CELINE MQTT policy service's command-line tool and server.
//!
//! Every subcommand works on the same policy documents the server loads; this crate only
//! reads files, parses arguments and prints. Exit status: 0 success (or allow), 1 a deny, a
//! failed test or a change found (per subcommand), 2 a usage, input or configuration error,
//! 3 `serve` failing after it started (or output that cannot be written), 141 the output's
//! reader went away (`| head`), as a shell reports `cat` ended there.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use mqtt_policy::{EXIT_CLOSED_OUTPUT, EXIT_FAILED, EXIT_USAGE, Failed, cli, is_closed_output};

#[derive(Parser)]
#[command(name = "mqtt-policy", version, about = "MQTT authorization for Mosquitto + go-auth: check, test and lint CELINE policies", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer mosquitto-go-auth's HTTP calls (/mqtt/user, /mqtt/acl, /mqtt/superuser).
    Serve(Box<cli::serve::Args>),
    /// Mint a development token signed by the dev key (see `serve --dev`).
    Token(cli::token::Args),
    /// Decide one request and explain why. Exit 0 allow, 1 deny, 2 usage or load error.
    Check(cli::check::Args),
    /// Decide JSON-lines requests from stdin, one JSON decision per line on stdout.
    Eval(cli::eval::Args),
    /// Report errors and warnings about a policy. Exit 1 on errors.
    Lint(cli::lint::Args),
    /// Run policy test cases. Exit 1 if any fails.
    Test(cli::test::Args),
    /// Decide the policy's invariants for every request, with a counterexample for each that fails. Exit 1 if any fails.
    Verify(cli::verify::Args),
    /// Which requests change decision if NEW replaces OLD. Exit 0 none, 1 some, 2 load error.
    Diff(cli::diff::Args),
    /// A subject's effective permissions per action, with deny carve-outs, as a topic tree.
    WhoCan(cli::who_can::Args),
    /// Write a policy, a module and their test cases as one bundle (for --policy-url).
    Bundle(cli::bundle::Args),
}

fn main() -> ExitCode {
    // Old flag spellings still work for a release; `serve` logs a warning for each.
    let (args, deprecations) = authorizer::config::rewrite_deprecated_flags(std::env::args_os());
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Serve(a) => cli::serve::run(*a, &deprecations),
        Command::Token(a) => cli::token::run(a),
        Command::Check(a) => cli::check::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Lint(a) => cli::lint::run(a),
        Command::Test(a) => cli::test::run(a),
        Command::Verify(a) => cli::verify::run(a),
        Command::Diff(a) => cli::diff::run(a),
        Command::WhoCan(a) => cli::who_can::run(a),
        Command::Bundle(a) => cli::bundle::run(a),
    };
    match result {
        Ok(code) => code,
        // The output's reader went away (`| head`): nothing to say.
        Err(e) if is_closed_output(&e) => ExitCode::from(EXIT_CLOSED_OUTPUT),
        Err(e) => {
            eprintln!("mqtt-policy: {e:#}");
            // A usage, input or configuration error is 2; a command that failed after it
            // started (`serve` once it serves) is 3.
            ExitCode::from(if e.is::<Failed>() { EXIT_FAILED } else { EXIT_USAGE })
        }
    }
}
