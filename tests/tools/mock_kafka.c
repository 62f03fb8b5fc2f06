/* A Kafka broker for the integration tests, in its own process: librdkafka's mock cluster
 * (rdkafka_mock.h, one broker, real protocol, consumer groups with committed offsets) with one
 * topic created up front. Its bootstrap address is the first line of stdout, so a test can start
 * it, read the address, and then SIGKILL and restart the daemon under test as often as it
 * likes without losing the messages or the group's committed offsets. Runs until SIGTERM or
 * SIGINT (or until its parent exits), then destroys the cluster and exits 0.
 *
 * Usage: mock_kafka [--topic NAME] [--partitions N] [--brokers N] */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static void usage(void)
{
        fprintf(stderr, "usage: mock_kafka [--topic NAME] [--partitions N] [--brokers N]\n");
}

static int parse_count(const char *s, int max, int *ret)
{
        char *end;
        long v;

        errno = 0;
        v = strtol(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || v < 1 || v > max)
                return -EINVAL;
        *ret = (int)v;
        return 0;
}

int main(int argc, char **argv)
{
        const char *topic = "conversation-events";
        int partitions = 4, brokers = 1, sig = 0, r;
        char errstr[512];
        rd_kafka_conf_t *conf;
        rd_kafka_t *rk;
        rd_kafka_mock_cluster_t *mc;
        rd_kafka_resp_err_t err;
        sigset_t set;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc) {
                        topic = argv[++i];
                } else if (strcmp(argv[i], "--partitions") == 0 && i + 1 < argc) {
                        r = parse_count(argv[++i], 10000, &partitions);
                        if (r < 0) {
                                usage();
                                return 64;
                        }
                } else if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc) {
                        r = parse_count(argv[++i], 16, &brokers);
                        if (r < 0) {
                                usage();
                                return 64;
                        }
                } else {
                        usage();
                        return 64;
                }
        }

        /* Blocked before any librdkafka thread exists, so every thread inherits the mask and
         * the signals wait for sigwait() below instead of killing the process mid-write. */
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        /* A test that dies (a criterion time-out) cannot stop its peers: they follow it. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() == 1)
                return 0;

        conf = rd_kafka_conf_new();
        /* The handle only hosts the cluster; it never connects anywhere itself. */
        if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
                fprintf(stderr, "mock_kafka: %s\n", errstr);
                rd_kafka_conf_destroy(conf);
                return 70;
        }
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (!rk) {
                fprintf(stderr, "mock_kafka: rd_kafka_new: %s\n", errstr);
                rd_kafka_conf_destroy(conf);
                return 70;
        }
        conf = NULL; /* owned by rk now */

        mc = rd_kafka_mock_cluster_new(rk, brokers);
        if (!mc) {
                fprintf(stderr, "mock_kafka: cannot create the mock cluster\n");
                rd_kafka_destroy(rk);
                return 70;
        }
        err = rd_kafka_mock_topic_create(mc, topic, partitions, 1);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                fprintf(stderr, "mock_kafka: cannot create topic %s: %s\n", topic,
                        rd_kafka_err2str(err));
                rd_kafka_mock_cluster_destroy(mc);
                rd_kafka_destroy(rk);
                return 70;
        }

        printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
        fflush(stdout);
        fprintf(stderr, "mock_kafka: topic %s with %d partitions at %s\n", topic, partitions,
                rd_kafka_mock_cluster_bootstraps(mc));

        r = sigwait(&set, &sig);
        if (r != 0)
                fprintf(stderr, "mock_kafka: sigwait: %s\n", strerror(r));
        fprintf(stderr, "mock_kafka: signal %d, shutting down\n", sig);

        rd_kafka_mock_cluster_destroy(mc);
        rd_kafka_destroy(rk);
        return 0;
}
