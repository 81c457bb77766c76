/*
 * boot_test.c: a bare-metal test built for QEMU's "virt" board, run unmodified by emu.
 *
 * It reads the device tree the loader passes in x0, finds the PL011 and prints through
 * it, reads the PSCI conduit, brings up every CPU listed under /cpus with PSCI CPU_ON,
 * enables the MMU on each CPU (identity map: RAM normal, devices nGnRnE), takes and
 * returns from an SVC and an undefined instruction through its own vector table, waits
 * for every secondary to be OFF (AFFINITY_INFO) and calls SYSTEM_OFF.
 *
 * Only the boot CPU prints, and nothing that depends on timing, so the console text is
 * the same on emu and on QEMU (tests/test_c_firmware.py compares them when QEMU is
 * installed). Build: make -C firmware/c (gcc-aarch64-linux-gnu).
 */

#include "guest.h"

#define PSCI_CPU_OFF        0x84000002u
#define PSCI_CPU_ON64       0xc4000003u
#define PSCI_AFFINITY_INFO64 0xc4000004u
#define PSCI_SYSTEM_OFF     0x84000008u
#define PSCI_VERSION        0x84000000u
#define MAX_CPUS 8

extern void secondary_entry(void);

static volatile int online[MAX_CPUS];
static volatile int mmu_on[MAX_CPUS];
static uint64_t page_table[512] __attribute__((aligned(4096)));
static volatile uint64_t last_esr, last_elr;

/* ---- console ---------------------------------------------------------------------- */

static void puthex(uint64_t v)
{
    char buf[19];
    int i = 18;
    buf[i] = 0;
    do {
        buf[--i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    buf[--i] = 'x';
    buf[--i] = '0';
    puts_(&buf[i]);
}

/* ---- PSCI -------------------------------------------------------------------------- */

/* ---- flattened device tree ----------------------------------------------------------- */

static int has_prefix(const char *s, const char *prefix)
{
    while (*prefix)
        if (*s++ != *prefix++)
            return 0;
    return 1;
}

struct board {
    uint64_t uart;
    int smc;
    int ncpus;
    uint64_t cpu_reg[MAX_CPUS];
};

static void parse_fdt(const uint8_t *fdt, struct board *board)
{
    const uint8_t *structs = fdt + be32(fdt + 8);
    const char *strings = (const char *)fdt + be32(fdt + 12);
    const uint8_t *p = structs;
    int depth = 0, in_cpus = 0, in_cpu = 0, cpus_depth = 0, cpu_cells = 1;
    int is_uart = 0, is_psci = 0;
    uint64_t reg = 0;
    const char *method = 0;

    board->ncpus = 0;
    for (;;) {
        uint32_t token = be32(p);
        p += 4;
        if (token == 1) {                                   /* FDT_BEGIN_NODE */
            const char *name = (const char *)p;
            uint32_t n = 0;
            while (name[n])
                n++;
            p += (n + 4) & ~3u;
            depth++;
            if (depth == 2 && streq(name, "cpus")) {
                in_cpus = 1;
                cpus_depth = depth;
            } else if (in_cpus && depth == cpus_depth + 1 && has_prefix(name, "cpu@")) {
                in_cpu = 1;
            }
            is_uart = is_psci = 0;
            reg = 0;
        } else if (token == 2) {                            /* FDT_END_NODE */
            if (is_uart && !board->uart)
                board->uart = reg;
            if (is_psci && method)
                board->smc = streq(method, "smc");
            if (in_cpu && board->ncpus < MAX_CPUS)
                board->cpu_reg[board->ncpus++] = reg;
            if (in_cpu)
                in_cpu = 0;
            else if (in_cpus && depth == cpus_depth)
                in_cpus = 0;
            is_uart = is_psci = 0;
            depth--;
        } else if (token == 3) {                            /* FDT_PROP */
            uint32_t len = be32(p), nameoff = be32(p + 4);
            const char *pname = strings + nameoff;
            const uint8_t *val = p + 8;
            if (streq(pname, "compatible")) {
                is_uart |= list_has((const char *)val, len, "arm,pl011");
                is_psci |= list_has((const char *)val, len, "arm,psci");
            } else if (streq(pname, "method")) {
                method = (const char *)val;
            } else if (streq(pname, "#address-cells") && in_cpus && !in_cpu) {
                cpu_cells = (int)be32(val);
            } else if (streq(pname, "reg")) {
                if (in_cpu)
                    reg = cpu_cells == 2 ? (uint64_t)be32(val) << 32 | be32(val + 4) : be32(val);
                else
                    reg = (uint64_t)be32(val) << 32 | be32(val + 4);  /* root: 2 address cells */
            }
            p += 8 + ((len + 3) & ~3u);
        } else if (token == 4) {                            /* FDT_NOP */
        } else {                                            /* FDT_END */
            break;
        }
    }
}

/* ---- MMU ------------------------------------------------------------------------------ */

static void build_page_table(void)
{
    /* Level-1 blocks of 1 GiB: 0..1 GiB devices (AttrIndx 1), 1..2 GiB RAM (AttrIndx 0). */
    page_table[0] = 0x00000000ull | (1ull << 10) | (1u << 2) | 1u | (1ull << 54) | (1ull << 53);
    page_table[1] = 0x40000000ull | (1ull << 10) | (3u << 8) | 1u;
}

static void enable_mmu(void)
{
    uint64_t mair = 0xffull | (0x00ull << 8);       /* 0: normal WB, 1: device nGnRnE */
    uint64_t tcr = 25 | (1u << 8) | (1u << 10) | (3u << 12) | (1u << 23);
    uint64_t sctlr;
    asm volatile("msr mair_el1, %0" : : "r"(mair));
    asm volatile("msr tcr_el1, %0" : : "r"(tcr));
    asm volatile("msr ttbr0_el1, %0" : : "r"(page_table));
    asm volatile("dsb ish; tlbi vmalle1; dsb ish; isb" : : : "memory");
    asm volatile("mrs %0, sctlr_el1" : "=r"(sctlr));
    sctlr |= 1u | (1u << 2) | (1u << 12);           /* M, C, I */
    asm volatile("msr sctlr_el1, %0; isb" : : "r"(sctlr) : "memory");
}

static int mmu_enabled(void)
{
    uint64_t sctlr;
    asm volatile("mrs %0, sctlr_el1" : "=r"(sctlr));
    return (int)(sctlr & 1);
}

/* ---- exceptions ------------------------------------------------------------------------ */

void sync_exception(uint64_t *frame)
{
    uint64_t esr, elr;
    (void)frame;
    asm volatile("mrs %0, esr_el1" : "=r"(esr));
    asm volatile("mrs %0, elr_el1" : "=r"(elr));
    last_esr = esr;
    last_elr = elr;
    if ((esr >> 26) == 0x00) {                      /* undefined instruction: skip it */
        elr += 4;
        asm volatile("msr elr_el1, %0" : : "r"(elr));
    }
}

void unexpected_exception(void)
{
    puts_("unexpected exception\n");
    psci(PSCI_SYSTEM_OFF, 0, 0, 0);
}

static void check_exceptions(void)
{
    uint64_t here;
    asm volatile("adr %0, 1f; svc #0x42; 1:" : "=r"(here) : : "memory");
    puts_("svc: EC ");
    puthex(last_esr >> 26);
    puts_(" ISS ");
    puthex(last_esr & 0x1ffffff);
    puts_(last_elr == here ? " returned past the svc\n" : " WRONG ELR\n");
    asm volatile("adr %0, 1f; 1: .inst 0x00000000" : "=r"(here) : : "memory");
    puts_("undef: EC ");
    puthex(last_esr >> 26);
    puts_(last_elr == here ? " at the instruction, skipped\n" : " WRONG ELR\n");
}

/* ---- CPUs --------------------------------------------------------------------------------- */

void secondary_main(uint64_t index)
{
    enable_mmu();
    mmu_on[index] = mmu_enabled();
    asm volatile("dmb ish" : : : "memory");
    online[index] = 1;
    psci(PSCI_CPU_OFF, 0, 0, 0);
}

void boot_main(const uint8_t *fdt)
{
    struct board board = {0};
    uint64_t self;
    int i;

    /* Booted as an ELF, QEMU (and emu) treat the image as bare-metal: x0 does not hold
     * the DTB, which sits at the start of RAM instead. */
    if (!fdt || be32(fdt) != 0xd00dfeed)
        fdt = (const uint8_t *)0x40000000;
    parse_fdt(fdt, &board);
    uart = (volatile uint32_t *)board.uart;
    psci_smc = board.smc;
    puts_("boot_test: device tree at ");
    puthex((uint64_t)fdt);
    puts_(", uart ");
    puthex(board.uart);
    puts_(", psci via ");
    puts_(board.smc ? "smc" : "hvc");
    puts_(", ");
    putdec((uint64_t)board.ncpus);
    puts_(" cpus\n");

    build_page_table();
    enable_mmu();
    puts_("cpu 0: mmu ");
    puts_(mmu_enabled() ? "on\n" : "OFF\n");
    check_exceptions();

    asm volatile("mrs %0, mpidr_el1" : "=r"(self));
    self &= 0xff00ffffffull;
    for (i = 0; i < board.ncpus; i++) {
        int64_t ret;
        if (board.cpu_reg[i] == self)
            continue;
        ret = psci(PSCI_CPU_ON64, board.cpu_reg[i], (uint64_t)secondary_entry, (uint64_t)i);
        puts_("cpu_on ");
        puthex(board.cpu_reg[i]);
        puts_(ret == 0 ? ": ok\n" : ": FAILED\n");
    }
    for (i = 0; i < board.ncpus; i++) {
        if (board.cpu_reg[i] == self)
            continue;
        while (!online[i])
            ;
        while (psci(PSCI_AFFINITY_INFO64, board.cpu_reg[i], 0, 0) != 1)
            ;
        puts_("cpu ");
        putdec((uint64_t)i);
        puts_(": online, mmu ");
        puts_(mmu_on[i] ? "on" : "OFF");
        puts_(", now off\n");
    }
    puts_("all cpus done, system off\n");
    psci(PSCI_SYSTEM_OFF, 0, 0, 0);
}
