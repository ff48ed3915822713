/*
 * tools/ — programs that measure: `peregrine bench` (engine-only speed) and,
 * later, `peregrine loadtest` (drives any OpenAI-compatible server).
 * Each exports a main-style entry that server/main.c dispatches to.
 */
#ifndef PG_TOOLS_H
#define PG_TOOLS_H

/* `peregrine bench ARGS` (argv[0] == "bench"). Returns the process exit code. */
int bench_main(int argc, char **argv);

#endif
