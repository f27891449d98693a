/* Timing wrapper for the hotplug benchmark (tests/xen-e2e/run bench), built at repack time.
 *
 * Installed as /etc/xen/scripts/<name>, it runs the real script,
 * /etc/xen/scripts/.bench-real/<name>, where .bench-real points at a full copy of the scripts
 * directory of the implementation being measured (so Debian's scripts find their helpers next to
 * themselves), with the same argv and environment, waits for it, and
 * appends two lines to /run/bench-hotplug.log, one as it starts the script and one when it ends:
 *     <start ns> - <name> <action> <XENBUS_PATH> -
 *     <start ns> <end ns> <name> <action> <XENBUS_PATH> <exit status> <cpu us>
 * (CLOCK_REALTIME, the clock dom0-bench reads with `date +%s%N` to tell the adds inside `xl create`
 * from the removes inside `xl destroy`; dom0 runs no time daemon that could step it. One write(2)
 * with O_APPEND, so concurrent scripts never interleave). The
 * measured interval is the script's own run, fork to reaped exit; the wrapper's own start-up is
 * outside it and is the same for every implementation measured. <cpu us> is the CPU time (user +
 * system) the script used, with every child it waited for (wait4's usage of the reaped script:
 * Debian's forks of xenstore-read, losetup and the rest count; a child left running does not).
 * Exits with the script's status.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Append one line to the log with a single write(2). */
static void log_line(long long start, const char *end, const char *name, const char *action,
                     const char *path, const char *code, const char *cpu)
{
    char line[512];
    int n = snprintf(line, sizeof line, "%lld %s %s %s %s %s%s\n", start, end, name, action,
                     path, code, cpu);
    if (n < 0 || n >= (int)sizeof line)
        return;
    int fd = open("/run/bench-hotplug.log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        if (write(fd, line, (size_t)n) < 0) {
            /* nothing to do: the benchmark notices a missing line */
        }
        close(fd);
    }
}

int main(int argc, char **argv)
{
    const char *slash = strrchr(argv[0], '/');
    const char *name = slash ? slash + 1 : argv[0];
    const char *action = argc > 1 ? argv[1] : "-";
    const char *path = getenv("XENBUS_PATH");
    if (!path)
        path = "-";
    char real[4096];
    if (slash)
        snprintf(real, sizeof real, "%.*s/.bench-real/%s", (int)(slash - argv[0]), argv[0], name);
    else
        snprintf(real, sizeof real, ".bench-real/%s", name);
    long long start = now_ns();
    /* A start line first: libxl SIGKILLs a script (this wrapper) that outlives its hotplug
     * timeout, and then no end line comes; the benchmark counts such starts as killed. */
    log_line(start, "-", name, action, path, "-", "");
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        /* libxl SIGKILLs the script it started (this wrapper) at its hotplug timeout; the real
         * script must die with it, as it would without the wrapper, instead of running on
         * (holding Debian's block lock) while the benchmark goes on. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1)
            _exit(137);
        execv(real, argv);
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0)
        ;
    long long end = now_ns();
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    long long cpu = (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000LL
        + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
    char end_s[32], code_s[16], cpu_s[32];
    snprintf(end_s, sizeof end_s, "%lld", end);
    snprintf(code_s, sizeof code_s, "%d", code);
    snprintf(cpu_s, sizeof cpu_s, " %lld", cpu);
    log_line(start, end_s, name, action, path, code_s, cpu_s);
    return code;
}
