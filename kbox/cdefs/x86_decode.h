int kbox_x86_insn_len(const uint8_t *code, size_t avail);
int kbox_x86_find_syscalls(const uint8_t *code, size_t len, uint64_t base, uint64_t *out, int max);
int kbox_x86_is_syscall_at(const uint8_t *code, size_t len, size_t offset);
