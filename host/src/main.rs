use clap::Parser;
use ktstr_host::app::cli;
use ktstr_host::interrupt;

fn main() {
    let args = cli::Cli::parse();
    let marks = ktstr_host::vmm::phases::Marks::default().with("cli_parsed");
    init_logging(args.verbose);
    interrupt::install();
    let code = match cli::validate(&args).and_then(|()| cli::dispatch(args, marks)) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<interrupt::Interrupted>().is_some() || interrupted_cause(&e) => {
            eprintln!("ktstr-host: interrupted; nothing was left half-written");
            interrupt::EXIT_INTERRUPTED
        }
        Err(e) => {
            eprintln!("ktstr-host: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn interrupted_cause(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string() == "interrupted") && interrupt::interrupted()
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
