// The single-example forward never allocates after construction (README, "Data conventions").
// This is the ONE translation unit of treegate_tests that replaces the global operator new and
// delete (every overload); the replacement counts calls and applies to the whole executable.
// Eigen's own heap use goes to std::malloc, so it is caught separately through
// EIGEN_RUNTIME_NO_MALLOC (see test_support.hpp).
#include "test_support.hpp"

#include <treegate/treegate.hpp>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <random>

// ---- counting operator new / delete -----------------------------------------------------------

namespace {

std::atomic<long> g_operator_new_calls{0};

void* counted_alloc(std::size_t size, std::size_t align, bool nothrow) {
    g_operator_new_calls.fetch_add(1, std::memory_order_relaxed);
    if (size == 0) size = 1;  // operator new(0) must return a unique pointer
    void* p = nullptr;
    if (align <= alignof(std::max_align_t)) {
        p = std::malloc(size);
    } else if (posix_memalign(&p, align < sizeof(void*) ? sizeof(void*) : align, size) != 0) {
        p = nullptr;
    }
    if (p == nullptr && !nothrow) throw std::bad_alloc();
    return p;
}

}  // namespace

// GCC pairs new with free() across inlined callers and warns; the pairing is ours and correct.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) { return counted_alloc(n, 0, false); }
void* operator new[](std::size_t n) { return counted_alloc(n, 0, false); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n, 0, true); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n, 0, true); }
void* operator new(std::size_t n, std::align_val_t a) { return counted_alloc(n, static_cast<std::size_t>(a), false); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_alloc(n, static_cast<std::size_t>(a), false); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return counted_alloc(n, static_cast<std::size_t>(a), true);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return counted_alloc(n, static_cast<std::size_t>(a), true);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Under AddressSanitizer a huge malloc aborts the process by default; the "absurd sizes" test
// (test_errors.cpp) needs it to fail like a normal malloc so that operator new throws bad_alloc
// and the layer reports config_error. ASAN_OPTIONS from the environment still take precedence.
#if defined(__SANITIZE_ADDRESS__)
#define TG_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TG_TEST_ASAN 1
#endif
#endif
#if defined(TG_TEST_ASAN)
extern "C" __attribute__((used, visibility("default"))) const char* __asan_default_options() {
    return "allocator_may_return_null=1";
}
#endif

// ---- helpers ------------------------------------------------------------------------------------

using treegate::activation;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using namespace tg_test;

namespace {

struct alloc_count {
    long operator_new = 0;
    long eigen_malloc = 0;
};

/// Allocations (operator new, and Eigen heap temporaries) made while `f` runs.
template <class F>
alloc_count allocations_during(F&& f) {
    const long n0 = g_operator_new_calls.load();
    const long e0 = eigen_forbidden_mallocs.load();
    Eigen::internal::set_is_malloc_allowed(false);
    f();
    Eigen::internal::set_is_malloc_allowed(true);
    return {g_operator_new_calls.load() - n0, eigen_forbidden_mallocs.load() - e0};
}

constexpr int reps = 25;

}  // namespace

TEST_CASE("alloc: the counting operator new sees allocations", "[alloc]") {
    // Guards the guard: if the replacement were not linked in, every test below would pass vacuously.
    static std::vector<double>* volatile sink = nullptr;  // keeps the allocations observable
    const auto c = allocations_during([] {
        sink = new std::vector<double>(100);
        delete sink;
        sink = nullptr;
    });
    CHECK(c.operator_new == 2);
    const auto e = allocations_during([] {
        Eigen::VectorXf v(1000);
        v.setZero();
    });
    CHECK(e.eigen_malloc >= 1);
}

TEMPLATE_LIST_TEST_CASE("alloc: tree_linear single-example forward never allocates", "[alloc][tree_linear]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    using layer_t = treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;
    std::mt19937 g(606);
    for (tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only})
        for (int depth : {0, 1, 4, 8})
            for (auto io : {std::pair<index_t, index_t>{1, 1}, {17, 5}, {70, 33}}) {
                if (depth == 8 && io.first > 17) continue;
                CAPTURE(treegate::to_string(mode), depth, io.first, io.second);
                const auto idx = random_gating_indices(depth, io.first, g);
                layer_t in_gated(io.first, io.second, depth, mode, gating::from_input(idx));
                layer_t ext(io.first, io.second, depth, mode, gating::external(), false);
                in_gated.initialize(1);
                ext.initialize(2);
                const vec<S> x = random_matrix<S>(io.first, 1, g);
                const vec<S> gates = random_gates<S>(depth, 1, g);
                vec<S> y(io.second);
                const auto c = allocations_during([&] {
                    for (int r = 0; r < reps; ++r) {
                        in_gated.forward(x, y);
                        in_gated.forward_add(x, y);
                        ext.forward(x, gates, y);
                        ext.forward_add(x, gates, y);
                    }
                });
                CHECK(c.operator_new == 0);
                CHECK(c.eigen_malloc == 0);
            }
}

TEST_CASE("alloc: fixed-size tree_linear single-example forward never allocates", "[alloc][tree_linear]") {
    treegate::tree_linear<float, 8, 5, 3> layer(tree_mode::path_sum, gating::from_input({1, 2, 7}));
    layer.initialize(3);
    Eigen::Matrix<float, 8, 1> x = Eigen::Matrix<float, 8, 1>::Random();
    Eigen::Matrix<float, 5, 1> y;
    Eigen::VectorXf xd = x, yd(5);
    const auto c = allocations_during([&] {
        for (int r = 0; r < reps; ++r) {
            layer.forward(x, y);
            layer.forward(xd, yd);  // dynamic vectors bind to the fixed-size Ref without a copy
        }
    });
    CHECK(c.operator_new == 0);
    CHECK(c.eigen_malloc == 0);
}

TEMPLATE_TEST_CASE("alloc: tree_feedforward single-example forward never allocates", "[alloc][tree_feedforward]",
                   treegate::kernels::reference, treegate::kernels::eigen) {
    using P = TestType;
    using ff_t = treegate::tree_feedforward<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;
    for (auto variant : {treegate::tree_mode::path_sum, treegate::tree_mode::leaf_only})
        for (index_t width : {index_t{1}, index_t{3}, index_t{130}})  // 130 > the 64-unit chunk
            for (index_t trees : {index_t{1}, index_t{3}}) {
                CAPTURE(treegate::to_string(variant), width, trees);
                ff_t layer(37, 19, width, 5, trees, activation::gelu, variant);
                layer.initialize(5);
                std::mt19937 g(static_cast<unsigned>(width));
                const vec<float> x = random_matrix<float>(37, 1, g);
                vec<float> y(19);
                const auto c = allocations_during([&] {
                    for (int r = 0; r < reps; ++r) layer.forward(x, y);
                });
                CHECK(c.operator_new == 0);
                CHECK(c.eigen_malloc == 0);
            }
}

TEST_CASE("alloc: dense, activation_layer and sliced_tree_linear single forward never allocate", "[alloc]") {
    treegate::dense<float> d(45, 23);
    d.initialize(1);
    treegate::activation_layer<float> a(activation::gelu, 23);
    treegate::sliced_tree_linear<float> bs(9, 23, 2, tree_mode::path_sum, treegate::slice_combine::sum, {{0, 1}, {2, 3}, {4, 8}, {5, 6}, {7, 0}});
    treegate::sliced_tree_linear<float> bc(9, 4, 2, tree_mode::leaf_only, treegate::slice_combine::concat, {{0, 1}, {2, 3}, {4, 8}, {5, 6}, {7, 0}});
    bs.initialize(2);
    bc.initialize(3);
    const Eigen::VectorXf x = Eigen::VectorXf::Random(45);
    Eigen::VectorXf h(23), z(23), y(23), yc(20);
    const auto c = allocations_during([&] {
        for (int r = 0; r < reps; ++r) {
            d.forward(x, h);
            a.forward(h, z);
            bs.forward(x, y);
            bc.forward(x, yc);
        }
    });
    CHECK(c.operator_new == 0);
    CHECK(c.eigen_malloc == 0);
}

TEST_CASE("alloc: sequential single forward allocates nothing once its workspace is warm", "[alloc][sequential]") {
    treegate::sequential model(treegate::dense<float>(20, 16), treegate::activation_layer<float>(activation::relu, 16),
                               treegate::tree_linear<float>(16, 7, 3, tree_mode::path_sum, gating::from_input({0, 5, 15})),
                               treegate::tree_feedforward<float>(7, 5, 2, 3));
    model.initialize(4);
    decltype(model)::workspace_type ws;
    const Eigen::VectorXf x = Eigen::VectorXf::Random(20);
    Eigen::VectorXf y(5);
    model.forward(x, y, ws);  // first call sizes the workspace
    const auto c = allocations_during([&] {
        for (int r = 0; r < reps; ++r) model.forward(x, y, ws);
    });
    CHECK(c.operator_new == 0);
    CHECK(c.eigen_malloc == 0);
}

TEST_CASE("alloc: batched forward with a warm workspace and a steady batch size allocates nothing", "[alloc][batch]") {
    // Reference policy: Eigen's GEMM may take its own blocking buffers, which is Eigen's business.
    using ref = treegate::kernels::reference;
    treegate::tree_linear<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, ref> tl(
        21, 13, 4, tree_mode::path_sum, gating::from_input({0, 3, 9, 20}));
    treegate::tree_feedforward<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic, ref> ff(
        21, 13, 3, 5, 2);
    tl.initialize(1);
    ff.initialize(2);
    std::mt19937 g(1);
    const mat<float> X = random_matrix<float>(21, 64, g);
    mat<float> Y(13, 64);
    treegate::workspace<float> ws;
    // Warm-up: the level schedule swaps its buffers every level, so a pass or two settles them.
    for (int r = 0; r < 3; ++r) {
        tl.forward_batch(X, Y, ws);
        ff.forward_batch(X, Y, ws);
    }
    const auto c = allocations_during([&] {
        for (int r = 0; r < 5; ++r) {
            tl.forward_batch(X, Y, ws);
            ff.forward_batch(X, Y, ws);
        }
    });
    CHECK(c.operator_new == 0);
    CHECK(c.eigen_malloc == 0);
}

TEST_CASE("alloc: a workspace grown to the largest batch is reused for smaller batches", "[alloc][batch]") {
    // workspace.hpp promises "Scratch buffers that grow to the largest batch seen and are then
    // reused without allocation"; a smaller batch after a larger one must not reallocate.
    using ref = treegate::kernels::reference;
    treegate::tree_linear<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, ref> tl(
        21, 13, 4, tree_mode::path_sum, gating::from_input({0, 3, 9, 20}));
    tl.initialize(1);
    std::mt19937 g(2);
    const mat<float> X64 = random_matrix<float>(21, 64, g), X40 = X64.leftCols(40);
    mat<float> Y64(13, 64), Y40(13, 40);
    treegate::workspace<float> ws;
    for (int r = 0; r < 3; ++r) {
        tl.forward_batch(X64, Y64, ws);
        tl.forward_batch(X40, Y40, ws);
    }
    const auto c = allocations_during([&] {
        tl.forward_batch(X64, Y64, ws);
        tl.forward_batch(X40, Y40, ws);
        tl.forward_batch(X64, Y64, ws);
    });
    CHECK(c.operator_new == 0);
    CHECK(c.eigen_malloc == 0);
}

TEST_CASE("alloc: sequential batched forward with a warm workspace and a steady batch size allocates nothing",
          "[alloc][sequential][batch]") {
    // sequential.hpp promises "a steady batch size allocates nothing after the first call". Its
    // layers share one inner workspace; here they need scratch matrices of different shapes.
    using ref = treegate::kernels::reference;
    treegate::sequential model(
        treegate::tree_linear<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, ref>(
            16, 7, 2, tree_mode::path_sum, gating::from_input({0, 9})),
        treegate::tree_feedforward<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic, ref>(
            7, 5, 2, 3));
    model.initialize(1);
    std::mt19937 g(3);
    const mat<float> X = random_matrix<float>(16, 32, g);
    mat<float> Y(5, 32);
    decltype(model)::workspace_type ws;
    for (int r = 0; r < 3; ++r) model.forward_batch(X, Y, ws);
    const auto c = allocations_during([&] {
        for (int r = 0; r < 3; ++r) model.forward_batch(X, Y, ws);
    });
    CHECK(c.operator_new == 0);
    CHECK(c.eigen_malloc == 0);
}

TEST_CASE("alloc: sliced_tree_linear batched forward with a warm workspace allocates nothing", "[alloc][blocked][batch]") {
    using ref = treegate::kernels::reference;
    for (auto combine : {treegate::slice_combine::concat, treegate::slice_combine::sum}) {
        CAPTURE(combine == treegate::slice_combine::sum ? "sum" : "concat");
        treegate::sliced_tree_linear<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, ref> b(
            6, 4, 2, tree_mode::path_sum, combine, {{0, 1}, {2, 3}, {4, 5}});
        b.initialize(1);
        std::mt19937 g(3);
        const mat<float> X = random_matrix<float>(18, 32, g);
        mat<float> Y(b.out_size(), 32);
        treegate::workspace<float> ws;
        for (int r = 0; r < 3; ++r) b.forward_batch(X, Y, ws);
        const auto c = allocations_during([&] {
            for (int r = 0; r < 3; ++r) b.forward_batch(X, Y, ws);
        });
        CHECK(c.operator_new == 0);
        CHECK(c.eigen_malloc == 0);
    }
}
