// Tiny DOM helpers: the page is plain JS, no framework beyond what Uppy brings.

/**
 * h('button', { class: 'btn', 'data-testid': 'x', onClick: fn }, 'Label', child…)
 * Props starting with "on" become listeners; true/false toggle boolean attributes;
 * null/undefined props and children are skipped.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag)
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value)
    } else if (key === 'class') {
      el.className = value
    } else {
      el.setAttribute(key, value === true ? '' : String(value))
    }
  }
  el.append(...children.flat(Infinity).filter((c) => c != null && c !== false))
  return el
}

export const $ = (selector, root = document) => root.querySelector(selector)

/** Sets an element's text only when it changed, so frequent progress renders stay cheap. */
export function setText(el, text) {
  const value = text == null ? '' : String(text)
  if (el.textContent !== value) el.textContent = value
}

/** Shows or hides an element with the `hidden` attribute. */
export function show(el, visible) {
  el.hidden = !visible
}

const ICONS = {
  upload: '<path d="M12 19V6m0 0-5 5m5-5 5 5"/>',
  pause: '<path d="M9 5v14M15 5v14"/>',
  play: '<path d="M8 5.5v13l10-6.5z"/>',
  x: '<path d="M6 6l12 12M18 6 6 18"/>',
  check: '<path d="m5 12.5 4.5 4.5L19 7.5"/>',
  copy: '<rect x="9" y="9" width="11" height="11" rx="2"/><path d="M5 15V6a2 2 0 0 1 2-2h8"/>',
  trash: '<path d="M4 7h16M10 11v6M14 11v6M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12M9 7V4h6v3"/>',
  chevron: '<path d="m9 6 6 6-6 6"/>',
  refresh: '<path d="M20 11a8 8 0 1 0-2.3 5.7M20 4v7h-7"/>',
  alert: '<path d="M12 8v5M12 16.5v.5"/><circle cx="12" cy="12" r="9"/>',
  key: '<circle cx="8" cy="15" r="4"/><path d="m11 12 9-9M17 6l3 3M15 8l2 2"/>',
  retry: '<path d="M4 12a8 8 0 1 0 2.3-5.7M4 4v5h5"/>',
}

/** Replaces each static <span data-icon="name"> in the page with its icon. */
export function fillIcons(root = document) {
  root.querySelectorAll('[data-icon]').forEach((el) => el.replaceWith(icon(el.dataset.icon)))
}

/** A decorative inline SVG icon (stroke style, inherits currentColor). */
export function icon(name) {
  const span = document.createElement('span')
  span.className = `icon icon-${name}`
  span.setAttribute('aria-hidden', 'true')
  span.innerHTML = `<svg viewBox="0 0 24 24" width="1em" height="1em" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">${ICONS[name]}</svg>`
  return span
}
