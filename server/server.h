/*
 * server/ — `peregrine serve`: an OpenAI-compatible HTTP server.
 *
 * Data flow (one request):
 *   libmicrohttpd thread: read the body (limits: --max-body, header and
 *     connection limits, idle timeout), check auth, parse and validate the
 *     OpenAI JSON (api.c), render the chat template (chat.c), tokenize, check
 *     prompt + max_tokens against the context, then sched_submit().
 *   engine thread (sched.c, the only thread that touches the engine): admits
 *     queued sequences into slots, runs engine_step(), and for every sampled
 *     token runs the incremental detokenizer and the stop-string matcher
 *     (stop.c), appending text and logprobs to the request's output buffer.
 *   libmicrohttpd thread again: drains that buffer into SSE chunks or, when
 *     the request is finished, into one JSON response (handlers.c).
 *
 * Streaming with libmicrohttpd: the daemon runs an internal polling thread
 * pool with MHD_ALLOW_SUSPEND_RESUME. A streamed body comes from a
 * content-reader callback that drains the request's output; when there is
 * nothing new it suspends the connection and returns 0 (never 0 without
 * suspending, which would busy-loop). The engine thread calls the request's
 * notify hook after each committed token, which resumes the connection.
 * Non-streamed requests suspend in the access handler and are resumed when
 * they finish. A suspended connection cannot see its client leave, so the
 * engine thread asks the HTTP side between steps (peek on the socket): a
 * client that disconnected cancels its request at the next step.
 *
 * Requests are reference-counted: the HTTP side holds one reference (dropped
 * when libmicrohttpd reports the request complete) and the scheduler holds
 * one (dropped when all its sequences are finished or dropped); the last
 * release frees it.
 *
 * Thread safety: serve_main() is the process entry; nothing here is shared
 * global state (signals are taken with sigwait() on the main thread).
 */
#ifndef PG_SERVER_H
#define PG_SERVER_H

/* `peregrine serve ARGS` (argv[0] == "serve"). Returns the process exit code:
 * 0 after a clean shutdown (SIGINT/SIGTERM), 1 when start-up fails, 2 for a
 * bad command line. */
int serve_main(int argc, char **argv);

#endif
