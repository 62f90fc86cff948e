// Talking to the modeldrop server: token storage, authenticated fetch, readable errors.

const TOKEN_KEY = 'modeldrop.token'

export const token = {
  get: () => localStorage.getItem(TOKEN_KEY) || '',
  set: (value) => localStorage.setItem(TOKEN_KEY, value),
  clear: () => localStorage.removeItem(TOKEN_KEY),
}

export function authHeaders() {
  const value = token.get()
  return value ? { Authorization: `Bearer ${value}` } : {}
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

/** Turns a server error body ({"error","message"} JSON, or anything else) into a sentence. */
export function messageFromBody(body, status) {
  try {
    const parsed = JSON.parse(body)
    if (parsed && typeof parsed.message === 'string' && parsed.message) return parsed.message
    if (parsed && typeof parsed.error === 'string' && parsed.error) return parsed.error
  } catch {
    // not JSON: fall through
  }
  const text = typeof body === 'string' ? body.trim() : ''
  if (text && text.length < 300 && !text.startsWith('<')) return text
  if (!status) return 'The server could not be reached. Check the connection and try again.'
  return `The server answered with HTTP ${status}.`
}

/** Ends a server message with punctuation so it can stand inside a longer text. */
export function sentence(message) {
  const text = String(message || '').trim()
  return /[.!?]$/.test(text) ? text : `${text}.`
}

function codeFromBody(body) {
  try {
    return JSON.parse(body).error || null
  } catch {
    return null
  }
}

let unauthorizedHandler = null

/** Called with the server's message whenever an API call answers 401. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler
}

/**
 * fetch() for the JSON API. Sends the bearer token, parses JSON, throws ApiError with the
 * server's human message. A 401 also calls the unauthorized handler unless `quiet401`.
 */
export async function api(path, { method = 'GET', quiet401 = false } = {}) {
  let response
  try {
    response = await fetch(path, {
      method,
      headers: { Accept: 'application/json', ...authHeaders() },
      cache: 'no-store',
    })
  } catch {
    throw new ApiError(0, 'network', messageFromBody('', 0))
  }
  const body = await response.text()
  if (!response.ok) {
    const error = new ApiError(response.status, codeFromBody(body), messageFromBody(body, response.status))
    if (response.status === 401 && !quiet401 && unauthorizedHandler) unauthorizedHandler(error.message)
    throw error
  }
  if (!body) return null
  try {
    return JSON.parse(body)
  } catch {
    throw new ApiError(response.status, 'bad_json', `The server sent a response that is not JSON (${path}).`)
  }
}
