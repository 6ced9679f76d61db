#include "core/bpf.h"
#include "arch.h"
#include <stddef.h>
#include <linux/seccomp.h>

#define SD_NR offsetof(struct seccomp_data, nr)
#define SD_ARCH offsetof(struct seccomp_data, arch)
/* Little-endian on both architectures: the low word of instruction_pointer comes first. */
#define SD_IP_LO offsetof(struct seccomp_data, instruction_pointer)
#define SD_IP_HI (offsetof(struct seccomp_data, instruction_pointer) + 4)

#define STMT(code, k) ((struct sock_filter){ (uint16_t)(code), 0, 0, (uint32_t)(k) })
#define JUMP(code, k, jt, jf) ((struct sock_filter){ (uint16_t)(code), (jt), (jf), (uint32_t)(k) })

int kbox_bpf_notify_all(struct sock_filter *out, int max)
{
    const struct sock_filter prog[] = {
        STMT(BPF_LD | BPF_W | BPF_ABS, SD_ARCH),
        JUMP(BPF_JMP | BPF_JEQ | BPF_K, KBOX_AUDIT_ARCH, 1, 0),
        STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
    };
    int n = (int)(sizeof(prog) / sizeof(prog[0]));
    if (n > max)
        return -7; /* E2BIG */
    for (int i = 0; i < n; i++)
        out[i] = prog[i];
    return n;
}

int kbox_bpf_trap_outside_gate(struct sock_filter *out, int max, uint64_t gate_lo,
                               uint64_t gate_hi)
{
    if (gate_hi <= gate_lo || (gate_lo >> 32) != ((gate_hi - 1) >> 32))
        return -22; /* EINVAL */
    const struct sock_filter prog[] = {
        /* 0 */ STMT(BPF_LD | BPF_W | BPF_ABS, SD_ARCH),
        /* 1 */ JUMP(BPF_JMP | BPF_JEQ | BPF_K, KBOX_AUDIT_ARCH, 1, 0),
        /* 2 */ STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        /* 3 */ STMT(BPF_LD | BPF_W | BPF_ABS, SD_IP_HI),
        /* 4 */ JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(gate_lo >> 32), 0, 4), /* -> 9 */
        /* 5 */ STMT(BPF_LD | BPF_W | BPF_ABS, SD_IP_LO),
        /* 6 */ JUMP(BPF_JMP | BPF_JGE | BPF_K, (uint32_t)gate_hi, 2, 0),          /* -> 9 */
        /* 7 */ JUMP(BPF_JMP | BPF_JGE | BPF_K, (uint32_t)gate_lo, 0, 1),          /* -> 9 */
        /* 8 */ STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 9 */ STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
    };
    int n = (int)(sizeof(prog) / sizeof(prog[0]));
    if (n > max)
        return -7;
    for (int i = 0; i < n; i++)
        out[i] = prog[i];
    return n;
}

int kbox_bpf_notify_trap_outside_gate(struct sock_filter *out, int max, uint64_t gate_lo,
                                      uint64_t gate_hi, const int *trapped, int ntrapped)
{
    if (gate_hi <= gate_lo || (gate_lo >> 32) != ((gate_hi - 1) >> 32))
        return -22; /* EINVAL */
    int n = 0;
#define EMIT(ins)                   \
    do {                            \
        if (n >= max)               \
            return -7; /* E2BIG */  \
        out[n++] = (ins);           \
    } while (0)
    EMIT(STMT(BPF_LD | BPF_W | BPF_ABS, SD_ARCH));
    EMIT(JUMP(BPF_JMP | BPF_JEQ | BPF_K, KBOX_AUDIT_ARCH, 1, 0));
    EMIT(STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    /* From the gate: every call goes to the supervisor. */
    EMIT(STMT(BPF_LD | BPF_W | BPF_ABS, SD_IP_HI));
    EMIT(JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(gate_lo >> 32), 0, 4));
    EMIT(STMT(BPF_LD | BPF_W | BPF_ABS, SD_IP_LO));
    EMIT(JUMP(BPF_JMP | BPF_JGE | BPF_K, (uint32_t)gate_hi, 2, 0));
    EMIT(JUMP(BPF_JMP | BPF_JGE | BPF_K, (uint32_t)gate_lo, 0, 1));
    EMIT(STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF));
    /* Elsewhere: the listed calls raise SIGSYS, the rest go to the supervisor. */
    EMIT(STMT(BPF_LD | BPF_W | BPF_ABS, SD_NR));
    for (int i = 0; i < ntrapped; i++)
        EMIT(JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)trapped[i], (uint8_t)(ntrapped - i), 0));
    EMIT(STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF));
    EMIT(STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP));
#undef EMIT
    return n;
}
