/* A stand-in for NVIDIA's NVML library (libnvidia-ml.so.1), for machines without a GPU:
 * only the entry points observer calls, with ABI-compatible structs, returning values
 * scripted in the file named by $OBSERVER_NVML_STANDIN, re-read on every call so a test
 * can change them while the daemon runs. Lines:
 *   devices N | driver TEXT
 *   dev I KEY VALUE            (name, uuid, util_gpu, util_mem, enc, dec, mem_total,
 *                               mem_used, temp, power_mw, clock_sm, clock_video, throttle)
 *   proc I PID SM MEM ENC DEC USED_BYTES
 *   session I ID PID CODEC WIDTH HEIGHT FPS LATENCY_US
 * Built with -DOLDER_DRIVER it lacks nvmlDeviceGetEncoderSessions and the JPEG/OFA
 * utilization entry points, like an older driver. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
enum { OK = 0, INVALID_ARGUMENT = 2, NOT_SUPPORTED = 3, INSUFFICIENT_SIZE = 7, NOT_FOUND = 6 };

typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int pid; unsigned long long timeStamp; unsigned int smUtil, memUtil, encUtil, decUtil; } nvmlProcessUtilizationSample_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId, computeInstanceId; } nvmlProcessInfo_t;
typedef struct { unsigned int sessionId, pid, vgpuInstance, codecType, hResolution, vResolution, averageFps, averageLatency; } nvmlEncoderSessionInfo_t;

#define MAXN 64
static char lines[256][256];
static int nlines;

static void load(void) {
    nlines = 0;
    const char *path = getenv("OBSERVER_NVML_STANDIN");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f) return;
    while (nlines < 256 && fgets(lines[nlines], sizeof lines[0], f)) {
        lines[nlines][strcspn(lines[nlines], "\n")] = 0;
        nlines++;
    }
    fclose(f);
}

/* The value of "dev I KEY" or of a global KEY (dev < 0), or NULL. */
static const char *get(int dev, const char *key) {
    static char out[256];
    char want[128];
    if (dev >= 0) snprintf(want, sizeof want, "dev %d %s ", dev, key);
    else snprintf(want, sizeof want, "%s ", key);
    for (int i = 0; i < nlines; i++)
        if (strncmp(lines[i], want, strlen(want)) == 0) {
            snprintf(out, sizeof out, "%s", lines[i] + strlen(want));
            return out;
        }
    return NULL;
}

static int index_of(nvmlDevice_t d) { return (int)(long)d - 1; }

static nvmlReturn_t num(nvmlDevice_t d, const char *key, unsigned long long *v) {
    load();
    const char *s = get(index_of(d), key);
    if (!s) return NOT_SUPPORTED;
    *v = strtoull(s, NULL, 10);
    return OK;
}

nvmlReturn_t nvmlInit_v2(void) { load(); return get(-1, "devices") ? OK : 9 /* DRIVER_NOT_LOADED */; }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return nvmlInit_v2(); }
nvmlReturn_t nvmlShutdown(void) { return OK; }
const char *nvmlErrorString(nvmlReturn_t r) { return r == OK ? "Success" : "stand-in error"; }

nvmlReturn_t nvmlSystemGetDriverVersion(char *buf, unsigned int len) {
    load();
    const char *v = get(-1, "driver");
    snprintf(buf, len, "%s", v ? v : "0.0");
    return OK;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
    load();
    const char *v = get(-1, "devices");
    *n = v ? (unsigned int)atoi(v) : 0;
    return OK;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    unsigned int n;
    nvmlDeviceGetCount_v2(&n);
    if (i >= n) return INVALID_ARGUMENT;
    *d = (nvmlDevice_t)(long)(i + 1);
    return OK;
}

static nvmlReturn_t text(nvmlDevice_t d, const char *key, char *buf, unsigned int len) {
    load();
    const char *s = get(index_of(d), key);
    if (!s) return NOT_SUPPORTED;
    snprintf(buf, len, "%s", s);
    return OK;
}
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *b, unsigned int l) { return text(d, "name", b, l); }
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *b, unsigned int l) { return text(d, "uuid", b, l); }

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    unsigned long long g, m;
    nvmlReturn_t r = num(d, "util_gpu", &g);
    if (r == OK) r = num(d, "util_mem", &m);
    if (r == OK) { u->gpu = g; u->memory = m; }
    return r;
}

static nvmlReturn_t util(nvmlDevice_t d, const char *key, unsigned int *u, unsigned int *period) {
    unsigned long long v;
    nvmlReturn_t r = num(d, key, &v);
    if (r == OK) { *u = v; *period = 167000; }
    return r;
}
nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t d, unsigned int *u, unsigned int *p) { return util(d, "enc", u, p); }
nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t d, unsigned int *u, unsigned int *p) { return util(d, "dec", u, p); }

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    unsigned long long t, u;
    nvmlReturn_t r = num(d, "mem_total", &t);
    if (r == OK) r = num(d, "mem_used", &u);
    if (r == OK) { m->total = t; m->used = u; m->free = t - u; m->reserved = 0; }
    return r;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *t) {
    unsigned long long v;
    nvmlReturn_t r = sensor == 0 ? num(d, "temp", &v) : NOT_SUPPORTED;
    if (r == OK) *t = v;
    return r;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw) {
    unsigned long long v;
    nvmlReturn_t r = num(d, "power_mw", &v);
    if (r == OK) *mw = v;
    return r;
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int *mhz) {
    unsigned long long v;
    nvmlReturn_t r = type == 1 ? num(d, "clock_sm", &v) : type == 3 ? num(d, "clock_video", &v) : NOT_SUPPORTED;
    if (r == OK) *mhz = v;
    return r;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d, unsigned long long *bits) {
    return num(d, "throttle", bits);
}

/* "proc I PID SM MEM ENC DEC USED" lines of device d, parsed into fields. */
static int procs(nvmlDevice_t d, unsigned long long out[MAXN][6]) {
    load();
    int n = 0;
    for (int i = 0; i < nlines && n < MAXN; i++) {
        int dev;
        unsigned long long f[6];
        if (sscanf(lines[i], "proc %d %llu %llu %llu %llu %llu %llu", &dev, &f[0], &f[1], &f[2], &f[3], &f[4], &f[5]) == 7 && dev == index_of(d)) {
            memcpy(out[n++], f, sizeof f);
        }
    }
    return n;
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *s, unsigned int *count, unsigned long long last) {
    (void)last;
    unsigned long long p[MAXN][6];
    int n = procs(d, p);
    if (!s || *count < (unsigned)n) { *count = n; return INSUFFICIENT_SIZE; }
    for (int i = 0; i < n; i++) {
        s[i].pid = p[i][0]; s[i].timeStamp = 1; s[i].smUtil = p[i][1];
        s[i].memUtil = p[i][2]; s[i].encUtil = p[i][3]; s[i].decUtil = p[i][4];
    }
    *count = n;
    return n ? OK : NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *out) {
    unsigned long long p[MAXN][6];
    int n = procs(d, p);
    if (!out || *count < (unsigned)n) { *count = n; return n ? INSUFFICIENT_SIZE : OK; }
    for (int i = 0; i < n; i++) {
        out[i].pid = p[i][0]; out[i].usedGpuMemory = p[i][5];
        out[i].gpuInstanceId = out[i].computeInstanceId = 0xffffffff;
    }
    *count = n;
    return OK;
}

#ifndef OLDER_DRIVER
nvmlReturn_t nvmlDeviceGetJpgUtilization(nvmlDevice_t d, unsigned int *u, unsigned int *p) { return util(d, "jpg", u, p); }
nvmlReturn_t nvmlDeviceGetOfaUtilization(nvmlDevice_t d, unsigned int *u, unsigned int *p) { return util(d, "ofa", u, p); }

nvmlReturn_t nvmlDeviceGetEncoderSessions(nvmlDevice_t d, unsigned int *count, nvmlEncoderSessionInfo_t *out) {
    load();
    unsigned int n = 0;
    for (int i = 0; i < nlines; i++) {
        int dev;
        unsigned int f[7];
        if (sscanf(lines[i], "session %d %u %u %u %u %u %u %u", &dev, &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6]) == 8 && dev == index_of(d)) {
            if (out && n < *count) {
                out[n].sessionId = f[0]; out[n].pid = f[1]; out[n].vgpuInstance = 0;
                out[n].codecType = f[2]; out[n].hResolution = f[3]; out[n].vResolution = f[4];
                out[n].averageFps = f[5]; out[n].averageLatency = f[6];
            }
            n++;
        }
    }
    *count = n;
    return OK;
}
#endif
