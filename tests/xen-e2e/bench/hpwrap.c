/* Timing wrapper for the hotplug benchmark (tests/xen-e2e/run bench), built at repack time.
 *
 * Installed as /etc/xen/scripts/<name>, it runs the real script, kept as
 * /etc/xen/scripts/.bench-real/<name> (a copy of the whole directory, so Debian's scripts find
 * their helpers next to themselves), with the same argv and environment, waits for it, and
 * appends one line to /run/bench-hotplug.log:
 *     <start ns> <end ns> <name> <action> <XENBUS_PATH> <exit status>
 * (CLOCK_MONOTONIC, one write(2) with O_APPEND, so concurrent scripts never interleave). The
 * measured interval is the script's own run, fork to reaped exit; the wrapper's own start-up is
 * outside it and is the same for every implementation measured. Exits with the script's status.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *slash = strrchr(argv[0], '/');
    const char *name = slash ? slash + 1 : argv[0];
    char real[4096];
    if (slash)
        snprintf(real, sizeof real, "%.*s/.bench-real/%s", (int)(slash - argv[0]), argv[0], name);
    else
        snprintf(real, sizeof real, ".bench-real/%s", name);
    long long start = now_ns();
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        execv(real, argv);
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        ;
    long long end = now_ns();
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    const char *path = getenv("XENBUS_PATH");
    char line[512];
    int n = snprintf(line, sizeof line, "%lld %lld %s %s %s %d\n", start, end, name,
                     argc > 1 ? argv[1] : "-", path ? path : "-", code);
    int fd = open("/run/bench-hotplug.log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        if (write(fd, line, (size_t)n) < 0) {
            /* nothing to do: the benchmark notices a missing line */
        }
        close(fd);
    }
    return code;
}
