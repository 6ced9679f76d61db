struct kbox_elf_info { int type; int machine; int is_dynamic; int is_static_pie;
                       uint64_t entry; char interp[256]; int phnum; };
struct kbox_loaded {
    uint64_t entry;
    uint64_t sp;
    uint64_t main_entry, main_bias, interp_bias;
    uint64_t phdr; uint32_t phnum, phent;
    const char *exe_path;
    const char *guest_path;
    uint64_t argc;
    char **argv, **envp;
    uint64_t *auxv;
    uint64_t main_start, main_len, interp_start, interp_len;
    int script_depth;
};
int kbox_api_elf_check(const void *image, size_t len, struct kbox_elf_info *info,
                       char *err, size_t errcap);
int kbox_api_load_program(const char *path, char *const argv[], char *const envp[],
                          const uint64_t *auxv, struct kbox_loaded *out, char *err,
                          size_t errcap);
