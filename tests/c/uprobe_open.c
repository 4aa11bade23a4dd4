/* Opens one uprobe perf event on PATH at OFFSET (the way aya attaches uprobes) and exits 0,
 * or prints the error and exits 1: shows which capabilities this kernel wants for it.
 *   uprobe_open PATH OFFSET */
#include <errno.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    FILE *f = fopen("/sys/bus/event_source/devices/uprobe/type", "r");
    int type;
    if (!f || fscanf(f, "%d", &type) != 1) { perror("uprobe PMU type"); return 2; }
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = type;
    attr.config1 = (unsigned long)argv[1];
    attr.config2 = strtoull(argv[2], NULL, 0);
    int fd = syscall(SYS_perf_event_open, &attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0) { printf("%s\n", strerror(errno)); return 1; }
    return 0;
}
