// treegate/error.hpp — the library's exception types and the helpers that format their messages.
// Used by every layer to reject bad shapes, bad configurations and (later) bad files.
#ifndef TREEGATE_ERROR_HPP
#define TREEGATE_ERROR_HPP

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace treegate {

/// Base of every exception treegate throws.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// An argument has the wrong size for the layer it was given to.
class shape_error : public error {
public:
    using error::error;
};

/// A layer was configured with values it cannot honour (depth, gating indices, zero sizes).
class config_error : public error {
public:
    using error::error;
};

/// A call the layer cannot serve as asked: an output that overlaps the input of a call that
/// must read all of its input before writing, an index outside the layer's range, a layer that
/// was moved from. Raised before anything is written.
class usage_error : public error {
public:
    using error::error;
};

/// A model file is malformed or does not match the layer it is loaded into.
class file_error : public error {
public:
    using error::error;
};

namespace detail {

template <class Error, class... Args>
[[noreturn]] void raise(const Args&... args) {
    std::ostringstream os;
    os << "treegate: ";
    (os << ... << args);
    throw Error(os.str());
}

template <class... Args>
void check_shape(bool ok, const Args&... args) {
    if (!ok) raise<shape_error>(args...);
}

template <class... Args>
void check_config(bool ok, const Args&... args) {
    if (!ok) raise<config_error>(args...);
}

}  // namespace detail
}  // namespace treegate

#endif
