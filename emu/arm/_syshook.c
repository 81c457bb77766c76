/* A C front end for Unicorn's MRS/MSR/SYS instruction hooks.
 *
 * Unicorn calls a UC_HOOK_INSN hook for every MRS, MSR and SYS the guest executes once
 * one is installed; a Linux boot executes millions of them (MRS SP_EL0 for `current`,
 * DC ZVA in memset), and nearly all are for registers the engine implements itself. This
 * callback looks the instruction's encoding up in a per-VM table and:
 *   - returns 0 (the engine executes the instruction) for encodings emu does not serve;
 *   - marks the other vCPUs' TLB or translated code stale for broadcast maintenance
 *     (TLBI ...IS, IC IALLUIS, IC IVAU), then lets the engine execute it;
 *   - calls the Python handler for everything else (counters, timers, ICC_*, PMU, ...).
 * Loaded through ctypes; emu falls back to a Python filter when it is not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    uint32_t crn, crm, op0, op1, op2;
    uint64_t val;
} cp_reg;

typedef uint32_t (*slow_fn)(void *uc, uint32_t reg, const cp_reg *cp, void *user);

enum { PASS = 0, PYTHON = 1, STALE_TLB = 2, STALE_CODE = 3 };

typedef struct {
    slow_fn slow;            /* the Python handler */
    void *slow_user;         /* its user data */
    const uint8_t *actions;  /* 65536 entries, by encoding key */
    uint8_t *stale;          /* per-vCPU flags: bit 0 TLB, bit 1 translated code */
    uint32_t nvcpus;
    uint32_t self;
    uint64_t calls;          /* hook calls seen, and how many reached Python */
    uint64_t slow_calls;
} hook_ctx;

static uint32_t emu_sysreg_hook(void *uc, uint32_t reg, const cp_reg *cp, void *user)
{
    hook_ctx *ctx = (hook_ctx *)user;
    uint32_t key = ((cp->op0 & 3) << 14) | ((cp->op1 & 7) << 11) | ((cp->crn & 15) << 7) |
                   ((cp->crm & 15) << 3) | (cp->op2 & 7);
    uint8_t action = ctx->actions[key];
    ctx->calls++;
    if (action == PASS)
        return 0;
    if (action == PYTHON) {
        ctx->slow_calls++;
        return ctx->slow(uc, reg, cp, ctx->slow_user);
    }
    uint8_t bit = action == STALE_TLB ? 1 : 2;
    for (uint32_t i = 0; i < ctx->nvcpus; i++)
        if (i != ctx->self)
            ctx->stale[i] |= bit;
    return 0;
}

/* Instruction counting by translation block: a UC_HOOK_BLOCK hook adds the block's
 * instructions (A64: size / 4) and stops the engine once the slice's limit is reached.
 * One call per block instead of Unicorn's count= hook on every instruction. A stop from
 * a block hook keeps that block from running, so the limit is checked before counting:
 * the block that crosses the limit runs to its end (a slice may overrun by a few
 * instructions, the same ones on every run) and the next one is not entered.
 * A debugger that stopped the engine inside a block resumes it with a new emu_start, whose
 * first block starts where it stopped: `resume` names that address, and entering it only
 * goes on with the block already counted (no count, no limit check), as if never stopped. */
typedef int (*stop_fn)(void *uc);

#define NO_RESUME UINT64_MAX

typedef struct {
    uint64_t executed;  /* instructions of the blocks entered since the counter was reset */
    uint64_t limit;     /* stop once executed >= limit */
    stop_fn stop;       /* uc_emu_stop */
    uint64_t resume;    /* the next block entry, if here, continues a counted block */
} insn_counter;

static void emu_block_hook(void *uc, uint64_t address, uint32_t size, void *user)
{
    insn_counter *c = (insn_counter *)user;
    if (c->resume != NO_RESUME) {
        uint64_t resume = c->resume;
        c->resume = NO_RESUME;
        if (address == resume)
            return;
    }
    if (c->executed >= c->limit) {
        c->stop(uc);
        return;
    }
    c->executed += size >> 2;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_syshook", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__syshook(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObject(m, "hook_address", PyLong_FromVoidPtr((void *)&emu_sysreg_hook)) < 0 ||
        PyModule_AddObject(m, "block_hook_address", PyLong_FromVoidPtr((void *)&emu_block_hook)) < 0 ||
        PyModule_AddIntConstant(m, "ctx_size", sizeof(hook_ctx)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
