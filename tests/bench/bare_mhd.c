/* Baseline for the Context API benchmark (tests/bench/api_bench.sh): the smallest useful
 * libmicrohttpd server, configured with the same thread model as the daemon's HTTP server
 * (internal polling threads with epoll, a pool of one thread per CPU, 1024 connections, 30 s
 * idle timeout), answering every request, whatever its method or path, with a fixed small JSON
 * body. Whatever ctxhookd does beyond this is the cost of the Context API itself, so the ratio
 * of the two request rates in one run is the figure that matters, not either absolute number.
 *
 * Usage: bare_mhd [THREADS]   (default: one per online CPU)
 * Binds 127.0.0.1 on a free port, prints the port as one line on stdout once it is serving, and
 * runs until SIGINT or SIGTERM. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

static const char body[] = "\"hello world value\"";

/* A static marker stored in *req_cls: its presence means "headers seen, now reading the body".
 */
static int request_started;

static enum MHD_Result answer(void *cls, struct MHD_Connection *connection, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **req_cls)
{
        struct MHD_Response *response;
        enum MHD_Result r;

        (void)cls;
        (void)url;
        (void)method;
        (void)version;
        (void)upload_data;

        /* Mirror what a real handler must do: the first call only announces the request, the
         * body (if any) arrives in later calls, and the answer is queued once it is complete. */
        if (*req_cls == NULL) {
                *req_cls = &request_started;
                return MHD_YES;
        }
        if (*upload_data_size != 0) {
                *upload_data_size = 0;
                return MHD_YES;
        }

        /* A response per request, as a handler with per-request content has to build. */
        response =
            MHD_create_response_from_buffer(sizeof(body) - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
        if (response == NULL)
                return MHD_NO;
        if (MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") !=
            MHD_YES) {
                MHD_destroy_response(response);
                return MHD_NO;
        }
        r = MHD_queue_response(connection, MHD_HTTP_OK, response);
        MHD_destroy_response(response);
        return r;
}

static int parse_threads(const char *s, unsigned *ret)
{
        char *end;
        long v;

        errno = 0;
        v = strtol(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || v < 1 || v > 1024)
                return -EINVAL;
        *ret = (unsigned)v;
        return 0;
}

int main(int argc, char **argv)
{
        struct sockaddr_in addr = {
            .sin_family = AF_INET,
            .sin_port = 0,
        };
        const union MHD_DaemonInfo *info;
        struct MHD_Daemon *d;
        unsigned threads;
        sigset_t mask;
        long ncpu;
        int sig, rc;

        ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        threads = ncpu > 0 ? (unsigned)ncpu : 1;
        if (argc > 2) {
                fprintf(stderr, "usage: %s [THREADS]\n", argv[0]);
                return 64;
        }
        if (argc == 2) {
                rc = parse_threads(argv[1], &threads);
                if (rc < 0) {
                        fprintf(stderr, "%s: bad thread count '%s' (1..1024)\n", argv[0], argv[1]);
                        return 64;
                }
        }

        /* Block the stop signals before any thread exists, so every MHD thread inherits the mask
         * and only sigwait() below ever sees them. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        rc = pthread_sigmask(SIG_BLOCK, &mask, NULL);
        if (rc != 0) {
                fprintf(stderr, "%s: pthread_sigmask: %s\n", argv[0], strerror(rc));
                return 71;
        }
        /* A client that vanishes mid-response must not kill the server. */
        signal(SIGPIPE, SIG_IGN);

        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL, answer,
                             NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                             MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_LIMIT,
                             1024u, MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
        if (d == NULL) {
                fprintf(stderr, "%s: cannot start libmicrohttpd on 127.0.0.1\n", argv[0]);
                return 69;
        }
        info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        if (info == NULL || info->port == 0) {
                fprintf(stderr, "%s: cannot learn the bound port\n", argv[0]);
                MHD_stop_daemon(d);
                return 71;
        }
        printf("%u\n", (unsigned)info->port);
        fflush(stdout);
        fprintf(stderr, "bare_mhd: listening on http://127.0.0.1:%u (%u threads)\n",
                (unsigned)info->port, threads);

        do {
                rc = sigwait(&mask, &sig);
        } while (rc != 0);

        MHD_stop_daemon(d);
        return 0;
}
