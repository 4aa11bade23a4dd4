/* A pipeline linking libavcodec that decodes many streams at once, paced like live video:
 *   streams FILE N FPS SECONDS
 * opens N decoders for FILE's video stream and, FPS times a second for SECONDS, sends each
 * one the next packet (looping over the file, pts increasing) and receives what it returns;
 * then drains and frees them. Prints "frames F packets P" over all decoders, the ground truth
 * the benchmark compares observer's counts with. Used for the scale benchmark: many small
 * streams cost the daemon per stream, not the machine per pixel. */
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long frames, packets;

static int drain(AVCodecContext *c, AVFrame *f) {
    int rc;
    while ((rc = avcodec_receive_frame(c, f)) == 0) {
        frames++;
        av_frame_unref(f);
    }
    return rc == AVERROR(EAGAIN) || rc == AVERROR_EOF ? 0 : rc;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: streams FILE N FPS SECONDS\n");
        return 2;
    }
    int n = atoi(argv[2]), fps = atoi(argv[3]), seconds = atoi(argv[4]);
    /* With STREAMS_WAIT set, a line on stdin first: a test lets the daemon attach to a
     * library copy it has never seen before the first codec call. */
    if (getenv("STREAMS_WAIT")) {
        char line[16];
        if (!fgets(line, sizeof line, stdin)) return 1;
    }
    AVFormatContext *fmt = NULL;
    if (avformat_open_input(&fmt, argv[1], NULL, NULL) < 0 || avformat_find_stream_info(fmt, NULL) < 0)
        return 1;
    int vi = av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, NULL, 0);
    if (vi < 0) return 1;
    /* The whole (small) file in memory: the run measures decoding, not reading. */
    AVPacket *pk[4096];
    int npk = 0;
    AVPacket *p = av_packet_alloc();
    while (npk < 4096 && av_read_frame(fmt, p) >= 0) {
        if (p->stream_index == vi) pk[npk++] = av_packet_clone(p);
        av_packet_unref(p);
    }
    if (npk == 0) return 1;
    const AVCodec *codec = avcodec_find_decoder(fmt->streams[vi]->codecpar->codec_id);
    AVCodecContext **c = calloc(n, sizeof *c);
    for (int i = 0; i < n; i++) {
        c[i] = avcodec_alloc_context3(codec);
        avcodec_parameters_to_context(c[i], fmt->streams[vi]->codecpar);
        c[i]->thread_count = 1;
        if (avcodec_open2(c[i], codec, NULL) < 0) return 1;
    }
    AVFrame *f = av_frame_alloc();
    long long start = now_ns(), period = 1000000000LL / fps;
    for (long long tick = 0; tick < (long long)fps * seconds; tick++) {
        long long due = start + tick * period, wait = due - now_ns();
        if (wait > 0) {
            struct timespec t = {wait / 1000000000LL, wait % 1000000000LL};
            nanosleep(&t, NULL);
        }
        AVPacket *src = pk[tick % npk];
        for (int i = 0; i < n; i++) {
            AVPacket *q = av_packet_clone(src);
            q->pts = q->dts = tick;
            if (avcodec_send_packet(c[i], q) < 0) return 1;
            packets++;
            av_packet_free(&q);
            if (drain(c[i], f) < 0) return 1;
        }
    }
    /* With STREAMS_HOLD set, the counts so far and then a line on stdin before draining: a
     * test holds N open, idle streams (a program that leaked or parked its decoders). */
    if (getenv("STREAMS_HOLD")) {
        printf("held frames %lld packets %lld\n", frames, packets);
        fflush(stdout);
        char line[16];
        if (!fgets(line, sizeof line, stdin)) return 1;
    }
    for (int i = 0; i < n; i++) {
        avcodec_send_packet(c[i], NULL);
        drain(c[i], f);
        avcodec_free_context(&c[i]);
    }
    printf("frames %lld packets %lld\n", frames, packets);
    return 0;
}
