// treegate/layers/sequential.hpp — a fixed chain of layers, checked once at construction.
// Holds the layers by value in a tuple; the intermediate activations live in its workspace.
#ifndef TREEGATE_LAYERS_SEQUENTIAL_HPP
#define TREEGATE_LAYERS_SEQUENTIAL_HPP

#include "../parallel/executor.hpp"
#include "../workspace.hpp"
#include "batch_overloads.hpp"
#include "layer_common.hpp"

#include <array>
#include <tuple>
#include <type_traits>
#include <utility>

namespace treegate {

namespace detail {

// A layer that needs gate values passed with each call cannot sit inside a sequential model.
template <class L, class = void>
struct has_gates : std::false_type {};
template <class L>
struct has_gates<L, std::void_t<decltype(std::declval<const L&>().gates())>> : std::true_type {};

template <class L>
bool needs_external_gates(const L& layer) {
    if constexpr (has_gates<L>::value)
        return layer.gates().is_external() && layer.depth() > 0;
    else
        return false;
}

/// A sequential model's scratch (see sequential::workspace_type).
template <class Scalar, std::size_t N>
struct sequential_workspace {
    workspace<Scalar> inner;
    std::array<matrix<Scalar>, N> acts;
};

template <class... Layers>
using sequential_scalar = typename std::tuple_element_t<0, std::tuple<Layers...>>::scalar_type;

}  // namespace detail

template <class... Layers>
class sequential : public detail::batch_overloads<sequential<Layers...>, matrix<detail::sequential_scalar<Layers...>>,
                                                  detail::sequential_workspace<detail::sequential_scalar<Layers...>,
                                                                               sizeof...(Layers)>> {
    static_assert(sizeof...(Layers) >= 1, "sequential: needs at least one layer");
    using first = std::tuple_element_t<0, std::tuple<Layers...>>;

public:
    using scalar_type = typename first::scalar_type;
    static_assert((std::is_same_v<scalar_type, typename Layers::scalar_type> && ...),
                  "sequential: every layer must use the same Scalar");
    using batch = matrix<scalar_type>;
    using vector = Eigen::Matrix<scalar_type, Eigen::Dynamic, 1>;
    static constexpr std::size_t size = sizeof...(Layers);
    static constexpr const char* name = "sequential";

    /// Scratch for forward passes: the layers' shared workspace and one buffer per boundary.
    /// Reused across calls; a steady batch size allocates nothing after the first call.
    using workspace_type = detail::sequential_workspace<scalar_type, size>;

    explicit sequential(Layers... layers) : layers_(std::move(layers)...) {
        check_chain(std::make_index_sequence<size>{});
    }

    template <std::size_t I>
    auto& layer() noexcept {
        return std::get<I>(layers_);
    }
    template <std::size_t I>
    const auto& layer() const noexcept {
        return std::get<I>(layers_);
    }

    index_t in_size() const noexcept { return std::get<0>(layers_).in_size(); }
    index_t out_size() const noexcept { return std::get<size - 1>(layers_).out_size(); }

    index_t parameter_count() const noexcept {
        return std::apply([](const auto&... l) { return (index_t{0} + ... + l.parameter_count()); }, layers_);
    }
    index_t memory_bytes() const noexcept {
        return std::apply([](const auto&... l) { return (index_t{0} + ... + l.memory_bytes()); }, layers_);
    }
    index_t macs_per_example() const noexcept {
        return std::apply([](const auto&... l) { return (index_t{0} + ... + l.macs_per_example()); }, layers_);
    }

    /// Layer i is initialised with seed + i.
    void initialize(std::uint64_t seed) noexcept {
        std::uint64_t i = 0;
        std::apply([&](auto&... l) { (l.initialize(seed + i++), ...); }, layers_);
    }

    // The serial and the allocating overloads (layers/batch_overloads.hpp).
    using detail::batch_overloads<sequential, batch, workspace_type>::forward_batch;

    /// The batched forward on an executor: layer after layer, each on the executor
    /// (bit-identical for any thread count).
    template <class Executor>
    void forward_batch(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace_type& ws, Executor&& ex) const {
        check_live();
        detail::check_batch(name, in_size(), X.rows(), X.cols(), out_size(), Y.rows(), Y.cols());
        run<0>(X, Y, ws, ex);
    }

    /// One example; allocates only the first time `ws` meets this model.
    void forward(const Eigen::Ref<const vector>& x, Eigen::Ref<vector> y, workspace_type& ws) const {
        check_live();
        detail::check_vector(name, "input", x.size(), in_size());
        detail::check_vector(name, "output", y.size(), out_size());
        run_single<0>(x, y, ws);
    }

private:
    // Moving a model moves its layers, which leaves each of them (and so the model) empty.
    void check_live() const {
        std::apply([](const auto&... l) { (detail::check_live(name, l.in_size() != 0), ...); }, layers_);
    }

    template <std::size_t... I>
    void check_chain(std::index_sequence<I...>) const {
        (check_link<I>(), ...);
    }

    template <std::size_t I>
    void check_link() const {
        const auto& l = std::get<I>(layers_);
        detail::check_config(!detail::needs_external_gates(l), name, ": layer ", I, " (", l.name,
                             ") is gated externally and cannot be chained");
        if constexpr (I + 1 < size) {
            const auto& next = std::get<I + 1>(layers_);
            detail::check_config(l.out_size() == next.in_size(), name, ": layer ", I, " (", l.name, ") outputs ",
                                 l.out_size(), " values but layer ", I + 1, " (", next.name, ") takes ", next.in_size());
        }
    }

    template <std::size_t I, class Executor>
    void run(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace_type& ws, Executor& ex) const {
        const auto& l = std::get<I>(layers_);
        if constexpr (I + 1 == size) {
            l.forward_batch(X, Y, ws.inner, ex);
        } else {
            batch& h = ws.acts[I];
            workspace<scalar_type>::ensure(h, l.out_size(), X.cols());
            l.forward_batch(X, h, ws.inner, ex);
            run<I + 1>(h, Y, ws, ex);
        }
    }

    template <std::size_t I>
    void run_single(const Eigen::Ref<const vector>& x, Eigen::Ref<vector> y, workspace_type& ws) const {
        const auto& l = std::get<I>(layers_);
        if constexpr (I + 1 == size) {
            l.forward(x, y);
        } else {
            batch& h = ws.acts[I];
            workspace<scalar_type>::ensure(h, l.out_size(), 1);
            l.forward(x, h.col(0));
            run_single<I + 1>(h.col(0), y, ws);
        }
    }

    std::tuple<Layers...> layers_;
};

}  // namespace treegate

#endif
