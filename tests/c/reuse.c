/* Encodes a few rounds of frames, each on a context that is freed (or closed) afterwards, so
 * the allocator hands the same address back: observer must count each round as its own
 * stream. Prints "<context address> <frames sent> <packets received>" per round. */
#include <libavcodec/avcodec.h>
#include <stdio.h>
#include <string.h>

static int encode(AVCodecContext *c, int n) {
    AVFrame *f = av_frame_alloc();
    AVPacket *p = av_packet_alloc();
    int got = 0;
    f->format = AV_PIX_FMT_YUV420P;
    f->width = c->width;
    f->height = c->height;
    if (av_frame_get_buffer(f, 0) < 0) return -1;
    for (int i = 0; i < n; i++) {
        av_frame_make_writable(f);
        memset(f->data[0], i * 7, f->linesize[0] * f->height);
        f->pts = i;
        if (avcodec_send_frame(c, f) < 0) return -1;
        while (avcodec_receive_packet(c, p) == 0) { got++; av_packet_unref(p); }
    }
    avcodec_send_frame(c, NULL);
    while (avcodec_receive_packet(c, p) == 0) { got++; av_packet_unref(p); }
    av_frame_free(&f);
    av_packet_free(&p);
    return got;
}

static AVCodecContext *open_ctx(const AVCodec *codec, AVCodecContext *c) {
    if (!c) c = avcodec_alloc_context3(codec);
    c->width = 64;
    c->height = 48;
    c->pix_fmt = AV_PIX_FMT_YUV420P;
    c->time_base = (AVRational){1, 25};
    c->gop_size = 5;
    if (avcodec_open2(c, codec, NULL) < 0) return NULL;
    return c;
}

int main(void) {
    const AVCodec *codec = avcodec_find_encoder(AV_CODEC_ID_MPEG4);
    if (!codec) return 1;
    /* Three contexts, freed after use: the allocator reuses the address. */
    for (int round = 0; round < 3; round++) {
        AVCodecContext *c = open_ctx(codec, NULL);
        if (!c) return 1;
        int n = 10 + 5 * round;
        printf("%p %d %d\n", (void *)c, n, encode(c, n));
        avcodec_free_context(&c);
    }
#if LIBAVCODEC_VERSION_MAJOR < 62
    /* One context closed and opened again: the same address for certain. */
    AVCodecContext *c = open_ctx(codec, NULL);
    printf("%p %d %d\n", (void *)c, 7, encode(c, 7));
    avcodec_close(c);
    open_ctx(codec, c);
    printf("%p %d %d\n", (void *)c, 9, encode(c, 9));
    avcodec_free_context(&c);
#endif
    return 0;
}
