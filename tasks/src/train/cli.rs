//! What every task binary does around [`run`]: parse, check `--resume`'s companions, set
//! the thread count, resolve the recipe, run, and exit with a status that says how it went.

use super::{run, RunOptions, Task, TrainArgs, Variant, RESUME_FLAGS};
use crate::Error;
use clap::parser::ValueSource;
use clap::ArgMatches;
use std::path::PathBuf;

/// A parsed command line and the flags given on it.
pub struct ParsedCli<A> {
    /// The parsed arguments.
    pub args: A,
    /// The ids of the flags given on the command line (`lr`, `stop_after`, …), of the
    /// top-level command.
    pub given: Vec<String>,
}

/// Print `error: <msg>` and exit with status 2 (a usage or configuration error).
pub fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

/// The defaults of `T`'s shared flags for each `--variant`, for `--help`.
pub fn recipes<T: Task>() -> String {
    let mut out = String::from("Defaults of the shared flags (the recipe) per --variant:\n");
    for v in <Variant as clap::ValueEnum>::value_variants() {
        let c = T::defaults(*v);
        out += &format!(
            "  {:<22} --optimizer {} --lr {} --warmup {} --min-lr-ratio {} --weight-decay {} \
             --steps {} --log-every {} --eval-every {} --checkpoint-every {}\n",
            v.name(),
            c.optimizer.name(),
            c.lr,
            c.warmup,
            c.min_lr_ratio,
            c.weight_decay,
            c.steps,
            c.log_every,
            c.eval_every,
            c.checkpoint_every
        );
    }
    out
}

/// Parse the command line into `A` (exiting with clap's message on a bad one), with
/// [`recipes`] of `T` at the end of `--help`.
pub fn parse_cli<A: clap::Parser, T: Task>() -> ParsedCli<A> {
    let command = A::command().after_help(recipes::<T>());
    let ids: Vec<String> = command
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .collect();
    let matches: ArgMatches = command.get_matches();
    let args = A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = ids
        .into_iter()
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .collect();
    ParsedCli { args, given }
}

/// Use `n` threads for everything (`None` or 0: `RAYON_NUM_THREADS`, else all cores), the
/// calling thread being one of them: a parallel op runs on it and `n − 1` workers, with no
/// hand-off to a worker and back (and with one thread, on it alone). Exits with status 2 on
/// more than 1024 or when the pool cannot start.
pub fn set_threads(n: Option<usize>) {
    let n = n.unwrap_or(0);
    if n > 1024 {
        fail(format!(
            "--threads {n} is more than 1024; use at most the number of cores (0 = all cores)"
        ));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .use_current_thread();
    if let Err(e) = pool.build_global() {
        fail(format!("cannot start {n} threads: {e}"));
    }
}

/// Train a `T` from the shared flags `train`, the task's settings `cfg` and the flags
/// `given` on the command line; never returns. With `--resume`, any flag but those of
/// [`RESUME_FLAGS`] is refused. Exit status: 0 for a completed or stopped run, 3 for a
/// diverged one, 1 for an error, 2 for a usage or configuration error.
pub fn run_cli<T: Task>(train: &TrainArgs, cfg: T::Config, given: &[String]) -> ! {
    if train.resume.is_some() {
        let extra: Vec<String> = given
            .iter()
            .filter(|id| !RESUME_FLAGS.contains(&id.as_str()))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        if !extra.is_empty() {
            fail(format!(
                "--resume continues with the configuration saved in the checkpoint; {} cannot \
                 be given with it (allowed: --threads, --quiet, --stop-after, --no-fetch)",
                extra.join(", ")
            ));
        }
    }
    set_threads(train.threads);
    let resolved = train.resolve(T::defaults(train.variant));
    let opts = RunOptions {
        out: train
            .resume
            .clone()
            .or(train.out.clone())
            .unwrap_or_else(|| PathBuf::from(format!("runs/{}-{}", T::NAME, train.variant.name()))),
        resume: train.resume.is_some(),
        stop_after: train.stop_after,
        verbose: !train.quiet,
        plots: true,
        fetch: !train.no_fetch,
        overwrite: train.overwrite,
    };
    match run::<T>(Some((resolved, cfg)), &opts) {
        Ok(summary) => std::process::exit(summary.outcome.exit_code()),
        Err(e @ Error::Config(_)) => fail(e),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
